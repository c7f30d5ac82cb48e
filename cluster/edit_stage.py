"""Stage 5: train the editor on the interpreter's training models, then score edits on held-out models.

Methods scored on the same edits (see :mod:`interpreter.edit_protocol` for pass/fail):

- ``decoder``: the latent edit decoded to a weight change in one forward pass (no data at edit time;
  MLP family only);
- ``guided``: the edit decoded by optimization: Adam steps on generated sequences whose targets are
  the model's own outputs with B switched on or off, the kept behaviors being those the interpreter
  reads and, for repair, B the one that looks corrupted (read as trained, yet not flagged; no labels
  of the model);
- ``steering``: mean-latent steering vector through a reconstruction decoder (the public method; MLP only);
- ``task_arithmetic``: mean sibling-pair weight difference for B;
- ``finetune``: a few epochs on data labelled with the true target set (uses the model's labels:
  an upper bound, not a competitor).

Every family is scored (``edit.families`` narrows it); a method with nothing to offer for an
architecture (the decoders outside the MLP family, task arithmetic without sibling pairs) is left
out of that architecture's rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch
from safetensors.torch import load_file, save_file

from interpreter.decoder import NeuronAlignedDecoder, add_delta, check_decodable, decodable
from interpreter.edit_baselines import relabel_finetune, steer, steering_vectors, task_vectors, train_reconstruction
from interpreter.edit_protocol import ADD_MIN, KEEP_TOL, judge, measure, success_table
from interpreter.editor import (CHECK_PARTS, Editor, Encoded, Pool, change_size, code_op, encode, failing_parts,
                                guided_edit, load_editor, save_editor, train_editor, typical_profile)
from interpreter.localization import greedy_carriers
from interpreter.model import LoadedInterpreter, load_interpreter
from zoo.behavior_bank import BehaviorBank
from zoo.behaviors import get_behavior
from zoo.errors import ZoolensError
from zoo.families import split_neurons
from zoo.interventions import resample
from zoo.probes import ProbeSet
from zoo.store import ZooStore, atomic_write_json, model_sha256
from zoo.train import predict
from zoo.version import code_version

from cluster.config import EditConfig
from cluster.edit_models import ArchGroup, load_groups
from cluster.runtime import cluster_cpus



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


def open_context(zoo_dir: Path, interp_dir: Path, probes: ProbeSet) -> EditContext:
    """Load the run's zoo metadata, interpreter and its train/test split, with one-line errors."""
    split_file = interp_dir / "split.json"
    if not split_file.exists():
        raise EditError(f"no trained interpreter in {interp_dir} (run 'zoolens interpreter train' first)")
    store = ZooStore(zoo_dir)
    zc = store.read_meta()["config"]
    split = json.loads(split_file.read_text())
    return EditContext(store, list(zc["behaviors"]), zc["vocab"], zc["length"], split["train"], split["test"],
                       load_interpreter(interp_dir), interp_dir, probes)


def _pool(ctx: EditContext, group: ArchGroup, bank: BehaviorBank) -> Pool:
    rows = group.rows
    corrupted = [c if r == "corrupted" else None for c, r in zip(rows["corrupted_behavior"], rows["role"])]
    return Pool(group.spec, group.params, encode(ctx.interp, group.spec, group.params, ctx.probes, bank),
                [tuple(b) for b in rows["behaviors"]], corrupted)


def read_sets(ctx: EditContext, enc: Encoded) -> list[list[str]]:
    """The behaviors the interpreter reads in each model (its tuned per-behavior thresholds)."""
    return [[n for n, p, t in zip(ctx.names, probs, ctx.interp.model.thresholds) if p > t] for probs in enc.probs.tolist()]


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


# ----------------------------------------------------------------------------- training
def train_bank(ctx: EditContext, cfg: EditConfig) -> BehaviorBank:
    """The sequences the editor trains on and edits read (never the evaluation sequences)."""
    return BehaviorBank.build(ctx.names, ctx.vocab, ctx.length, cfg.editor.bank_per_behavior, seed=cfg.seed)


def eval_bank(ctx: EditContext, cfg: EditConfig) -> BehaviorBank:
    """The fresh sequences edits are judged on: never seen by the editor or by an edit."""
    return BehaviorBank.build(ctx.names, ctx.vocab, ctx.length, cfg.eval_per_behavior, seed=cfg.seed + 10_000)


def check_bank(ctx: EditContext, cfg: EditConfig) -> BehaviorBank:
    """The sequences the guided edit checks itself on: neither its training rows nor the evaluation's."""
    return BehaviorBank.build(ctx.names, ctx.vocab, ctx.length, cfg.eval_per_behavior, seed=cfg.seed + 20_000)


def train_stage(ctx: EditContext, cfg: EditConfig, out_dir: Path,
                on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train the editor and the steering baseline's decoder on the interpreter's training models; save both.

    The typical profile (for naming a corrupted behavior) comes from every family's clean models; the decoders
    train on the MLP models only (none: they stay untrained and no edit uses them).
    """
    t0 = time.perf_counter()
    bank = train_bank(ctx, cfg)
    pools = [_pool(ctx, g, bank) for g in edit_groups(ctx, family_ids(ctx, ctx.train_ids, cfg.families))]
    mcfg = ctx.interp.model.cfg
    editor = Editor(cfg.editor, ctx.names, mcfg.d_model, mcfg.latent_dim, ctx.vocab)
    clean = [(p.enc.profile[i], p.behaviors[i]) for p in pools for i, c in enumerate(p.corrupted) if c is None]
    editor.typical_profile = typical_profile(torch.stack([f for f, _ in clean]), [b for _, b in clean], ctx.names)
    mlp_pools = [p for p in pools if decodable(p.spec)]
    history = train_editor(editor, mlp_pools, bank, on_step)
    rec = train_reconstruction(mlp_pools, mcfg.d_model, mcfg.latent_dim, cfg.editor.d_hidden, cfg.editor.rank, ctx.vocab,
                               cfg.reconstruction_steps, cfg.editor.batch_models, cfg.seed)
    latent = torch.cat([p.enc.latent for p in pools])
    has = torch.tensor([[b in s for b in ctx.names] for p in pools for s in p.behaviors])
    tail = history[-min(100, len(history)):]
    summary = {"seconds": time.perf_counter() - t0, "n_train_models": int(sum(len(p.behaviors) for p in pools)),
               "n_decoder_train_models": int(sum(len(p.behaviors) for p in mlp_pools)),
               "final_loss": _mean(h["loss"] for h in tail), "final_acc": _mean(h["acc"] for h in tail),
               "final_change": _mean(h["change"] for h in tail),
               "corrupted_named_right": _corrupted_named_right(pools, ctx.names, editor.typical_profile),
               "interpreter_version": ctx.interpreter_version(),
               "code_version": code_version()}
    tmp = out_dir.parent / f".{out_dir.name}.tmp"  # written whole, then renamed into place
    shutil.rmtree(tmp, ignore_errors=True)
    save_editor(editor, tmp, extra={"summary": summary})
    steering = {"steering": steering_vectors(latent, has).contiguous(),
                **{f"rec.{k}": v.detach().contiguous() for k, v in rec.state_dict().items()}}
    save_file(steering, str(tmp / "steering.safetensors"))
    atomic_write_json(tmp / "history.json", history)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return summary


def _mean(values: Any) -> float:
    """Mean of the values, NaN for none (a decoder with no MLP models to train on has no history)."""
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def _corrupted_named_right(pools: list[Pool], names: list[str], typical: torch.Tensor) -> float:
    """Share of the training repair pairs' corrupted models whose corrupted behavior the reading names."""
    hits = [names[g] == c for p in pools for g, c in zip(p.enc.corrupted_behavior(typical).tolist(), p.corrupted)
            if c is not None]
    return float(np.mean(hits)) if hits else float("nan")


def load_stage(ctx: EditContext, out_dir: Path, cfg: EditConfig) -> tuple[Editor, NeuronAlignedDecoder, torch.Tensor]:
    """The trained editor, the steering decoder and the steering vectors [K, latent_dim]."""
    if not (out_dir / "editor.json").exists():
        raise EditError(f"no trained editor in {out_dir} (run 'zoolens edit train' first)")
    editor, _ = load_editor(out_dir)
    tensors = load_file(str(out_dir / "steering.safetensors"))
    mcfg = ctx.interp.model.cfg
    rec = NeuronAlignedDecoder(mcfg.d_model, mcfg.latent_dim, ctx.vocab, cfg.editor.d_hidden, cfg.editor.rank, zero_init=False)
    rec.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("rec.")})
    return editor, rec.eval(), tensors["steering"]


# ----------------------------------------------------------------------------- evaluation
METHODS = ("decoder", "guided", "steering", "task_arithmetic", "finetune")


@dataclass
class EditSet:
    """Edits of one kind on some held-out models of one architecture."""

    op: str
    group: ArchGroup
    behaviors: list[str]  # the behavior each edit is about (for repair: the truly corrupted one)
    clean: list[float] | None = None  # repair: the clean twin's rate on that behavior

    def unions(self) -> list[list[str]]:
        return [sorted(set(h) | {b}) for h, b in zip(self.group.rows["behaviors"], self.behaviors)]

    def true_targets(self) -> list[list[str]]:
        """The behavior set the edited model should flag (what fine-tuning on relabeled data is given)."""
        out = []
        for have, b in zip(self.group.rows["behaviors"], self.behaviors):
            have = list(have)
            out.append(have + [b] if self.op == "add" else [x for x in have if x != b] if self.op == "remove" else have)
        return out


def plan_edit_sets(ctx: EditContext, group: ArchGroup, rng: np.random.Generator) -> list[EditSet]:
    """One add and one remove of a random behavior per clean model; a repair of every corrupted model with a twin."""
    rows = group.rows
    clean = group.select(rows["role"] != "corrupted")
    sets = []
    if len(clean):
        adds = [[b for b in ctx.names if b not in have] for have in clean.rows["behaviors"]]
        keep = np.array([bool(a) for a in adds])
        if keep.any():
            sub = clean.select(keep)
            sets.append(EditSet("add", sub, [a[int(rng.integers(len(a)))] for a in adds if a]))
        sets.append(EditSet("remove", clean, [list(h)[int(rng.integers(len(h)))] for h in clean.rows["behaviors"]]))
    corrupted = group.select(rows["role"] == "corrupted")
    if len(corrupted):
        sets.append(EditSet("repair", corrupted, list(corrupted.rows["corrupted_behavior"])))
    return sets


def clean_rates(ctx: EditContext, es: EditSet, bank: BehaviorBank) -> list[float]:
    """Each corrupted model's clean twin (same model continued on clean labels) measured on the repaired behavior."""
    twins = [f"{m}r" for m in es.group.rows["model_id"]]
    order = {m: i for i, m in enumerate(twins)}
    out = [float("nan")] * len(twins)
    for g in load_groups(ctx.store, twins):
        rates = measure(g.spec, g.params, bank, [sorted(set(h)) for h in g.rows["behaviors"]])
        for m, r in zip(g.rows["model_id"], rates):
            i = order[m]
            out[i] = r.behavior[es.behaviors[i]]
    return out


def _sign(op: str) -> float:
    return -1.0 if op == "remove" else 1.0


def edited_weights(method: str, es: EditSet, enc: Encoded, read: list[list[str]], chosen: list[str], tools: dict,
                   cfg: EditConfig) -> tuple[dict | None, dict | None]:
    """(new weights, change) of one method for an edit set; (None, None) where the method has nothing to offer."""
    spec, params, op = es.group.spec, es.group.params, code_op(es.op)
    ops = [op] * len(chosen)
    if method in ("decoder", "steering") and not decodable(spec):
        return None, None
    if method == "decoder":
        delta = tools["editor"].delta(spec, params, enc, *tools["editor"].codes(ops, chosen))
    elif method == "guided":
        delta = guided_edit(spec, params, tools["train_bank"], ops, chosen, read, cfg.guided_steps, cfg.guided_lr,
                            seed=cfg.seed, check=tools["check_bank"], rounds=cfg.guided_rounds)
    elif method == "steering":
        shift = _sign(op) * tools["steering"][[tools["names"].index(b) for b in chosen]]
        _, delta = steer(tools["reconstruction"], spec, params, enc, shift)
    elif method == "task_arithmetic":
        vectors = tools["task_vectors"].get(spec.key(), {})
        if not all(b in vectors for b in chosen):
            return None, None
        delta = {k: torch.stack([_sign(op) * vectors[b][k] for b in chosen]) for k in params if k != "embed"}
    elif method == "finetune":
        lr = torch.tensor(es.group.rows["lr"].to_numpy(), dtype=torch.float32)
        new = relabel_finetune(spec, params, tools["train_bank"], es.true_targets(), es.unions(), lr, cfg.seed,
                               epochs=cfg.finetune_epochs)
        delta = {k: new[k] - params[k] for k in params if k != "embed"}
    else:
        raise ValueError(f"unknown edit method '{method}'")
    delta = {k: v.detach() for k, v in delta.items()}
    return add_delta(params, delta), delta


def score_edit_set(ctx: EditContext, es: EditSet, tools: dict, cfg: EditConfig, bank: BehaviorBank) -> list[dict]:
    """Every method's verdicts on one edit set."""
    g = es.group
    enc = encode(ctx.interp, g.spec, g.params, ctx.probes, tools["train_bank"])
    read = read_sets(ctx, enc)
    if es.op == "repair":
        guess = enc.corrupted_behavior(tools["editor"].typical_profile).tolist()
        chosen = [ctx.names[i] for i in guess]
        es.clean = clean_rates(ctx, es, bank)
    else:
        chosen = list(es.behaviors)
    unions, op = es.unions(), code_op(es.op)
    before = measure(g.spec, g.params, bank, unions)
    rows = []
    for method in METHODS:
        with torch.no_grad() if method in ("decoder", "steering") else contextlib.nullcontext():
            new, delta = edited_weights(method, es, enc, read, chosen, tools, cfg)
        if new is None:
            continue
        after = measure(g.spec, new, bank, unions)
        size = change_size(g.params, delta).sqrt()
        checked = ~failing_parts(g.spec, g.params, delta, tools["check_bank"], [op] * len(chosen), chosen, read).any(dim=1)
        for m, (have, b) in enumerate(zip(g.rows["behaviors"], es.behaviors)):
            v = judge(es.op, b, list(have), before[m], after[m], es.clean[m] if es.clean else None)
            rows.append({"method": method, "op": es.op, "behavior": b, "model_id": g.rows["model_id"][m],
                         "family": g.spec.family, "arch": g.spec.key(), "success": v.success, "target_rate": v.target_rate,
                         "before_rate": before[m].behavior[b], "worst_kept_drop": v.worst_kept_drop,
                         "fpr_rise": v.fpr_rise, "change": float(size[m]), "chosen": chosen[m], "self_check": bool(checked[m]),
                         "reasons": "; ".join(v.reasons)})
    return rows


# ----------------------------------------------------------------------------- localization
def localize(es: EditSet, rank_bank: BehaviorBank, bank: BehaviorBank, k: int, seed: int) -> list[dict]:
    """Resample-ablate each model's top-k carriers of B (ranked on ``rank_bank``), and k random neurons, on ``bank``.

    Returns per model: B's rate drop under each ablation and how far the other behaviors move (mean absolute).
    """
    g = es.group
    unions = [sorted(set(h)) for h in g.rows["behaviors"]]
    top = greedy_carriers(g.spec, g.params, rank_bank, unions, es.behaviors, k, seed=seed)  # [B, hidden neurons]
    gen = torch.Generator().manual_seed(seed)
    k = int(top[0].sum())
    masks = {"top": top,
             "random": torch.zeros_like(top).scatter(1, torch.rand(top.shape, generator=gen).topk(k, dim=1).indices, True)}
    before = measure(g.spec, g.params, bank, unions)
    after = {}
    for name, mask in masks.items():
        hooks = {hook: resample(part, gen) for hook, part in split_neurons(g.spec, mask).items()}
        after[name] = measure(g.spec, g.params, bank, unions, interventions=hooks)
    rows = []
    for m, b in enumerate(es.behaviors):
        others = [x for x in unions[m] if x != b]
        move_top = float(np.mean([abs(before[m].behavior[x] - after["top"][m].behavior[x]) for x in others])) if others else 0.0
        rows.append({"behavior": b, "model_id": g.rows["model_id"][m], "family": g.spec.family,
                     "drop_top": before[m].behavior[b] - after["top"][m].behavior[b],
                     "drop_random": before[m].behavior[b] - after["random"][m].behavior[b],
                     "others_move_top": move_top})
    return rows


def localization_table(rows: list[dict]) -> pd.DataFrame:
    """Per family and behavior: mean drops, their ratio and whether top-k ablation passes (>= 3x random, others
    within 5 points)."""
    df = (pd.DataFrame(rows).groupby(["family", "behavior"])
          .agg(n=("model_id", "size"), drop_top=("drop_top", "mean"), drop_random=("drop_random", "mean"),
               others_move_top=("others_move_top", "mean"))
          .reset_index())
    df["ratio"] = df["drop_top"] / df["drop_random"].clip(lower=1e-6)
    df["passes"] = (df["drop_top"] > 0) & (df["drop_top"] >= 3 * df["drop_random"]) & (df["others_move_top"] <= KEEP_TOL)
    return df


# ----------------------------------------------------------------------------- the whole evaluation
def sibling_task_vectors(ctx: EditContext) -> dict[str, dict[str, dict]]:
    """Per architecture and behavior, the mean sibling-pair weight difference among the training models."""
    manifest = ctx.store.read_manifest(columns=["model_id", "sibling_of"])
    train = set(ctx.train_ids)
    pairs = manifest[manifest["sibling_of"].notna() & manifest["model_id"].isin(train) & manifest["sibling_of"].isin(train)]
    ids = sorted(set(pairs["model_id"]) | set(pairs["sibling_of"]))
    out = {}
    for g in (load_groups(ctx.store, ids) if ids else []):
        out[g.spec.key()] = task_vectors(g.params, [tuple(b) for b in g.rows["behaviors"]], list(g.rows["model_id"]),
                                         [s if isinstance(s, str) else None for s in g.rows["sibling_of"]], ctx.names)
    return out


def training_ceiling(ctx: EditContext) -> dict[str, float]:
    """Per behavior: share of clean training models trained on it whose held-out rate on it reached ADD_MIN."""
    m = ctx.store.read_manifest(columns=["model_id", "role", "test_behavior_acc"])
    m = m[m["model_id"].isin(set(ctx.train_ids)) & m["role"].isin(["normal", "sibling"])]
    rates = pd.DataFrame([(b, r) for s in m["test_behavior_acc"] for b, r in json.loads(s).items()], columns=["b", "r"])
    return {b: float((g["r"] >= ADD_MIN).mean()) for b, g in rates.groupby("b")}


def evaluate_edits(ctx: EditContext, cfg: EditConfig, editor_dir: Path, progress: bool = False) -> dict[str, Any]:
    """Score every method on add/remove/repair edits of held-out models, then the localization check."""
    from tqdm.auto import tqdm

    editor, rec, steering = load_stage(ctx, editor_dir, cfg)
    tools = {"editor": editor, "reconstruction": rec, "steering": steering, "names": ctx.names,
             "train_bank": train_bank(ctx, cfg), "check_bank": check_bank(ctx, cfg),
             "task_vectors": sibling_task_vectors(ctx)}
    bank = eval_bank(ctx, cfg)
    rng = np.random.default_rng(cfg.seed)
    test_ids = family_ids(ctx, ctx.test_ids, cfg.families)  # the cap counts models of these families only
    if cfg.max_test_models and len(test_ids) > cfg.max_test_models:  # a sample, not the head: splits come sorted
        pick = np.random.default_rng(cfg.seed).choice(len(test_ids), cfg.max_test_models, replace=False)
        test_ids = [test_ids[i] for i in sorted(pick)]
    sets = [es for g in edit_groups(ctx, test_ids) for es in plan_edit_sets(ctx, g, rng)]
    rows, loc = [], []
    for es in tqdm(sets, desc="edit sets", disable=not progress):
        rows += score_edit_set(ctx, es, tools, cfg, bank)
        if es.op == "remove":  # every (model, assigned behavior) pair of the clean models
            pairs = [(i, b) for i, have in enumerate(es.group.rows["behaviors"]) for b in have]
            every = EditSet("remove", es.group.take([i for i, _ in pairs]), [b for _, b in pairs])
            loc += localize(every, tools["train_bank"], bank, cfg.localization_k, cfg.seed)
    verdicts = pd.DataFrame(rows)
    return {"verdicts": verdicts, "localization": localization_table(loc) if loc else pd.DataFrame(),
            "ceiling": training_ceiling(ctx)}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Success rates per method and operation, per behavior, and the localization verdict, as plain JSON."""
    v, loc = result["verdicts"], result["localization"]
    v = v.assign(checked_success=v["success"] & v["self_check"])
    by_op = (v.groupby(["method", "op"]).agg(n=("success", "size"), success_rate=("success", "mean"),
                                            mean_change=("change", "mean"), mean_target_rate=("target_rate", "mean"),
                                            self_check_rate=("self_check", "mean"), checked=("self_check", "sum"),
                                            checked_success=("checked_success", "sum"))
             .reset_index())
    # how far the label-free self-check can be trusted: the protocol's verdict on the edits that pass it
    by_op["success_if_checked"] = by_op["checked_success"] / by_op["checked"].where(by_op["checked"] > 0)
    by_op = by_op.drop(columns=["checked", "checked_success"]).to_dict(orient="records")
    for row in by_op:  # None, not NaN, where no edit passed its check (report.json stays strict JSON)
        row["success_if_checked"] = None if pd.isna(row["success_if_checked"]) else float(row["success_if_checked"])
    by_family = (v.groupby(["method", "family", "op"]).agg(n=("success", "size"), success_rate=("success", "mean"))
                 .reset_index().to_dict(orient="records"))
    per_behavior = {m: success_table(g.to_dict(orient="records")) for m, g in v.groupby("method")}
    loc_by_family = ({f: {"passes": int(g["passes"].sum()), "behaviors": len(g)} for f, g in loc.groupby("family")}
                     if len(loc) else {})
    return {"by_op": by_op, "by_family": by_family, "per_behavior": per_behavior, "training_ceiling": result["ceiling"],
            "localization": loc.to_dict(orient="records"),
            "localization_passes": int(loc["passes"].sum()) if len(loc) else 0,
            "localization_behaviors": len(loc), "localization_by_family": loc_by_family}


# ----------------------------------------------------------------------------- one edit, kept in a zoo store
def edit_model(ctx: EditContext, cfg: EditConfig, editor_dir: Path, out: ZooStore, model_id: str, op: str,
               behavior: str | None, method: str = "guided") -> dict[str, Any]:
    """Edit one model of the zoo and write the result, with its lineage, to the zoo store ``out``.

    Uses the model's weights and signature and the interpreter only; the before/after rates printed
    come from fresh sequences and are a report, not an input.
    """
    if op != "repair" and behavior not in ctx.names:
        get_behavior(behavior)  # an unknown name gets the behavior registry's own one-line error
        raise EditError(f"behavior '{behavior}' is not one of this zoo's behaviors: {', '.join(ctx.names)}")
    if method not in ("decoder", "guided"):
        raise EditError(f"unknown edit method '{method}' (decoder or guided)")
    groups = load_groups(ctx.store, [model_id])
    if not groups:
        raise EditError(f"model '{model_id}' is not in the zoo at {ctx.store.uri}")
    group = groups[0]
    if method == "decoder":
        check_decodable(group.spec)
    editor, _, _ = load_stage(ctx, editor_dir, cfg)
    bank = train_bank(ctx, cfg)
    enc = encode(ctx.interp, group.spec, group.params, ctx.probes, bank)
    read = read_sets(ctx, enc)[0]
    target = ctx.names[int(enc.corrupted_behavior(editor.typical_profile)[0])] if op == "repair" else behavior
    check = check_bank(ctx, cfg)
    if method == "decoder":
        with torch.no_grad():
            delta = editor.delta(group.spec, group.params, enc, *editor.codes([op], [target]))
    else:
        delta = guided_edit(group.spec, group.params, bank, [code_op(op)], [target], [read], cfg.guided_steps,
                            cfg.guided_lr, seed=cfg.seed, check=check, rounds=cfg.guided_rounds)
    delta = {k: v.detach() for k, v in delta.items()}
    new = add_delta(group.params, delta)
    missed = failing_parts(group.spec, group.params, delta, check, [code_op(op)], [target], [read])[0].tolist()
    self_check = ", ".join(part for part, bad in zip(CHECK_PARTS, missed) if bad) or "passed"
    after_set = sorted(set(read) - {target}) if op == "remove" else sorted(set(read) | {target})
    fresh = eval_bank(ctx, cfg)
    union = sorted(set(read) | {target})
    before, after = measure(group.spec, group.params, fresh, [union])[0], measure(group.spec, new, fresh, [union])[0]
    new_id = f"{model_id}.{op}-{target}"
    row = _edited_row(ctx, group, new, new_id, model_id, op, target, method, after_set, editor_dir)
    rows = fresh.sample(np.random.default_rng(cfg.seed), union, 1000)
    flags = predict(group.spec, new, torch.from_numpy(fresh.x[rows]).unsqueeze(0))[0] > 0
    row["test_acc"] = float((flags.numpy() == fresh.labels(rows, after_set)).mean())  # against what the edit aimed at
    row["sha256"] = model_sha256(new, 0)
    row["edit_self_check"] = self_check
    if not out.has_meta():
        out.write_meta({"edited_from": ctx.store.uri, "code_version": code_version()})
    out.write_cohort(row["cohort_id"], group.spec, new, [row])
    return {"model_id": new_id, "parent_id": model_id, "op": op, "behavior": target, "method": method,
            "interpreter_reads": read, "before": before.behavior | {"false_positive_rate": before.fpr},
            "after": after.behavior | {"false_positive_rate": after.fpr},
            "change": float(change_size(group.params, delta).sqrt()[0]), "self_check": self_check, "store": out.uri}


def _edited_row(ctx: EditContext, group: ArchGroup, new: dict, new_id: str, parent: str, op: str, behavior: str,
                method: str, behaviors: list[str], editor_dir: Path) -> dict[str, Any]:
    """The manifest row of an edited model: what it is, and where it came from."""
    parent_row = group.rows.iloc[0]
    editor_hash = hashlib.sha256((editor_dir / "editor.safetensors").read_bytes()).hexdigest()[:16]
    return {"model_id": new_id, "cohort_id": "c_edit_" + hashlib.sha256(new_id.encode()).hexdigest()[:12],
            "family": group.spec.family, "arch": group.spec.key(), "spec": group.spec.model_dump_json(),
            "depth": group.spec.depth, "width": group.spec.width, "activation": group.spec.activation,
            "behaviors": behaviors, "role": "edited", "parent_id": parent, "edit_op": op, "edit_behavior": behavior,
            "edit_method": method, "interpreter_version": ctx.interpreter_version(), "editor_version": editor_hash,
            "parent_test_acc": float(parent_row["test_acc"]), "index": 0,
            "code_version": code_version()}


# ----------------------------------------------------------------------------- Ray tasks (GPU-free: CPU work per run)
@ray.remote(max_retries=0)
def edit_task(kind: str, zoo_dir: str, interp_dir: str, editor_dir: str, probe_cfg: dict, cfg: EditConfig,
              threads: int, **kwargs: Any) -> dict[str, Any]:
    """Run one edit-stage job on a Ray worker: "train", "evaluate" or "apply"."""
    from zoo.probes import make_probe_set

    torch.set_num_threads(threads)
    zc = ZooStore(zoo_dir).read_meta()["config"]
    ctx = open_context(Path(zoo_dir), Path(interp_dir), make_probe_set(zc["behaviors"], zc["vocab"], zc["length"], **probe_cfg))
    if kind == "train":
        from tqdm.auto import tqdm

        with tqdm(total=cfg.editor.steps, desc="editor", disable=not kwargs.get("progress", False)) as bar:
            def on_step(step: int, row: dict[str, float]) -> None:
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{row['loss']:.3f}", agree=f"{row['acc']:.3f}")
            return train_stage(ctx, cfg, Path(editor_dir), on_step)
    if kind == "evaluate":
        result = evaluate_edits(ctx, cfg, Path(editor_dir), progress=kwargs.get("progress", False))
        return {**summarize(result), "verdicts": result["verdicts"], "localization_table": result["localization"]}
    if kind == "apply":
        return edit_model(ctx, cfg, Path(editor_dir), ZooStore(kwargs["out"]), kwargs["model_id"], kwargs["op"],
                          kwargs.get("behavior"), kwargs.get("method", "guided"))
    raise ValueError(f"unknown edit job '{kind}'")


def run_edit_task(kind: str, zoo_dir: Path | str, interp_dir: Path, editor_dir: Path, probe_cfg: dict, cfg: EditConfig,
                  **kwargs: Any) -> dict[str, Any]:
    """Submit an edit job to the cluster with every CPU of it and wait for the result."""
    cpus = cluster_cpus()
    return ray.get(edit_task.options(num_cpus=cpus).remote(kind, str(zoo_dir), str(interp_dir), str(editor_dir),
                                                          probe_cfg, cfg, cpus, **kwargs))
