"""What every edit reads: the run's zoo, its interpreter and split, the probe set, and the sequence banks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interpreter.editing.config import EditConfig
from interpreter.editing.editor import Encoded, Pool, encode
from interpreter.editing.groups import ArchGroup, load_groups
from interpreter.editing.space import judging_bank
from interpreter.model import LoadedInterpreter, load_interpreter
from zoo.behavior_bank import BehaviorBank
from zoo.behaviors import get_behavior
from zoo.errors import ZoolensError
from zoo.probes import ProbeSet, make_probe_set
from zoo.store import ZooStore


class EditError(ZoolensError):
    """An edit cannot be made with what is on disk or what was asked."""


@dataclass
class EditContext:
    """Everything an edit needs: zoo, split, interpreter and probe set of one run."""

    store: ZooStore
    names: list[str]
    vocab: int
    length: int
    train_ids: list[str]
    test_ids: list[str]
    interp: LoadedInterpreter
    interp_dir: Path
    probes: ProbeSet

    def interpreter_version(self) -> str:
        """Hash of the interpreter weights an edit was made with (its lineage)."""
        return hashlib.sha256((self.interp_dir / "weights.safetensors").read_bytes()).hexdigest()[:16]


def open_context(zoo_dir: Path | str, interp_dir: Path, probe_cfg: Mapping[str, Any]) -> EditContext:
    """Load the run's zoo metadata, interpreter, train/test split and probe set (``probe_cfg``: n_pos, n_near,
    n_random), with one-line errors."""
    interp_dir = Path(interp_dir)
    split_file = interp_dir / "split.json"
    if not split_file.exists():
        raise EditError(f"no trained interpreter in {interp_dir} (run 'zoolens interpreter train' first)")
    store = ZooStore(zoo_dir)
    zc = store.read_meta()["config"]
    split = json.loads(split_file.read_text())
    probes = make_probe_set(zc["behaviors"], zc["vocab"], zc["length"], **probe_cfg)
    return EditContext(store, list(zc["behaviors"]), zc["vocab"], zc["length"], split["train"], split["test"],
                       load_interpreter(interp_dir), interp_dir, probes)


# ----------------------------------------------------------------------------- banks: three seeds, never mixed
FRESH_SEED, CHECK_SEED = 10_000, 20_000  # added to the edit seed: the evaluation's and the self-check's samples


def train_bank(ctx: EditContext, cfg: EditConfig) -> BehaviorBank:
    """The sequences the editor trains on and edits read (never the evaluation sequences)."""
    return BehaviorBank.build(ctx.names, ctx.vocab, ctx.length, cfg.editor.bank_per_behavior, seed=cfg.seed)


def fresh_bank(ctx: EditContext, cfg: EditConfig) -> BehaviorBank:
    """Fresh sequences never seen by the editor or by an edit (a sample: positives, near misses, randoms)."""
    return _sampled(ctx.names, ctx.vocab, ctx.length, cfg, FRESH_SEED)


def eval_bank(ctx: EditContext, cfg: EditConfig) -> BehaviorBank:
    """What edits are judged on: the whole input space when it holds at most ``cfg.judge_max_sequences`` sequences,
    else :func:`fresh_bank`."""
    return edit_judging_bank(ctx.names, ctx.vocab, ctx.length, cfg)


def check_bank(ctx: EditContext, cfg: EditConfig) -> BehaviorBank:
    """What the guided edit checks itself on: the whole input space like the evaluation when it is small enough,
    else sequences that are neither its training rows nor the evaluation's."""
    return self_check_bank(ctx.names, ctx.vocab, ctx.length, cfg)


def edit_judging_bank(names: Sequence[str], vocab: int, length: int, cfg: EditConfig) -> BehaviorBank:
    """:func:`eval_bank` for any behaviors, vocabulary and length (a model outside a run's zoo)."""
    return judging_bank(names, vocab, length, cfg.judge_max_sequences,
                        lambda: _sampled(names, vocab, length, cfg, FRESH_SEED))


def self_check_bank(names: Sequence[str], vocab: int, length: int, cfg: EditConfig) -> BehaviorBank:
    """:func:`check_bank` for any behaviors, vocabulary and length (a model outside a run's zoo)."""
    return judging_bank(names, vocab, length, cfg.judge_max_sequences,
                        lambda: _sampled(names, vocab, length, cfg, CHECK_SEED))


def _sampled(names: Sequence[str], vocab: int, length: int, cfg: EditConfig, offset: int) -> BehaviorBank:
    """``cfg.eval_per_behavior`` sequences per behavior and kind, drawn at seed ``cfg.seed + offset``."""
    return BehaviorBank.build(list(names), vocab, length, cfg.eval_per_behavior, seed=cfg.seed + offset)


def refuse_edit(model_id: str, op: str, behavior: str | None, has: Collection[str], known: Sequence[str],
                corrupted: bool = False, force: bool = False) -> None:
    """EditError (one line) for a behavior that is not one of ``known``, or, unless ``force``, an edit that would do
    nothing: adding a behavior the model has (``has``), removing one it lacks, repairing a model whose labels were
    not ``corrupted``. Such edits changed weights a lot and raised false positives for nothing."""
    has = set(has)
    if behavior is not None:
        get_behavior(behavior)  # an unknown name gets the behavior registry's own one-line error
        if behavior not in known:
            raise EditError(f"behavior '{behavior}' is not one of this zoo's behaviors: {', '.join(known)}")
    if force:
        return
    hint = "(--force edits anyway)"
    if op == "add" and behavior in has:
        raise EditError(f"model {model_id} already flags {behavior}: nothing to add {hint}")
    if op == "remove" and behavior not in has:
        raise EditError(f"model {model_id} does not flag {behavior}: nothing to remove {hint}")
    if op == "repair" and not corrupted:
        raise EditError(f"model {model_id} was not trained on corrupted labels: nothing to repair {hint}")


# ----------------------------------------------------------------------------- models and their reading
def family_ids(ctx: EditContext, ids: list[str], families: list[str] | None) -> list[str]:
    """The ids of models of ``families`` (all when None), in order, from the manifest alone: no weights are read."""
    if families is None:
        return list(ids)
    family = ctx.store.read_manifest(columns=["model_id", "family"]).set_index("model_id")["family"]
    kept = [m for m in ids if family[m] in families]
    if not kept:
        raise EditError(f"no model of the families {', '.join(families)} among these models")
    return kept


def edit_groups(ctx: EditContext, ids: list[str]) -> list[ArchGroup]:
    """The named models' architecture groups (weights loaded and hash-verified)."""
    groups = load_groups(ctx.store, ids)
    if not groups:
        raise EditError("no model to edit among these models")
    return groups


def read_sets(ctx: EditContext, enc: Encoded) -> list[list[str]]:
    """The behaviors the interpreter reads in each model (its tuned per-behavior thresholds)."""
    return [[n for n, p, t in zip(ctx.names, probs, ctx.interp.model.thresholds) if p > t] for probs in enc.probs.tolist()]


def make_pool(ctx: EditContext, group: ArchGroup, bank: BehaviorBank) -> Pool:
    """Training models of one architecture with their reading, behavior sets and corrupted behavior."""
    rows = group.rows
    corrupted = [c if r == "corrupted" else None for c, r in zip(rows["corrupted_behavior"], rows["role"])]
    return Pool(group.spec, group.params, encode(ctx.interp, group.spec, group.params, ctx.probes, bank),
                [tuple(b) for b in rows["behaviors"]], corrupted)
