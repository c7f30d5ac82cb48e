"""The guided edit and the localization check on any ``nn.Module`` (an adapter model), through
``torch.func.functional_call`` over its parameters: the editing package's own functions run unchanged on the
module presented as a family (:func:`zoo.adapters.family.as_family`), and the edit is judged by the same protocol.

:func:`edit_foreign_model` is ``zoolens edit MODEL --zoo FOREIGN``: one model of a foreign zoo, edited with a run's
edit settings and written, with its lineage, to a foreign store of edits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from interpreter.editing.config import EditConfig
from interpreter.editing.context import EditError, edit_judging_bank, self_check_bank
from interpreter.editing.decoder import add_delta
from interpreter.editing.editor import change_size, guided_edit
from interpreter.editing.protocol import aimed_accuracy, judge, measure
from interpreter.editing.space import judged_on
from zoo.adapters.family import as_family, release
from zoo.adapters.subject import ModuleSubject
from zoo.behavior_bank import BehaviorBank
from zoo.foreign.store import ForeignStore
from zoo.store import atomic_write_json
from zoo.version import code_version


def edit_module(subject: ModuleSubject, op: str, behavior: str, keep: Sequence[str], names: Sequence[str],
                steps: int = 300, lr: float = 1e-2, rounds: int = 2, bank_size: int = 256, seed: int = 0,
                check_bank: BehaviorBank | None = None, judge_bank: BehaviorBank | None = None,
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Add or remove ``behavior`` in the module while keeping ``keep`` (the behaviors it is read to have): the
    guided edit, then the protocol's verdict. Returns the edited parameters (the module's own names) and the verdict
    with the rates before and after, the relative weight change, the accuracy against the set aimed at and what
    was judged on.

    The edit trains on ``bank_size`` sequences per behavior and kind (seed ``seed``) and checks itself on
    ``check_bank``; the verdict comes from ``judge_bank`` (pass the whole input space to judge exactly:
    :func:`interpreter.editing.context.edit_judging_bank`). Either bank, when not given, is a fresh sample of
    ``bank_size`` (``2 * bank_size`` to judge) at seeds of its own. Both must label every behavior of ``names``."""
    if op not in ("add", "remove"):
        raise ValueError(f"op must be add or remove, got {op!r}")
    vocab, length = subject.vocab or 7, subject.length or 7
    spec, params = as_family(subject)
    try:
        train = BehaviorBank.build(names, vocab, length, bank_size, seed)
        check = check_bank if check_bank is not None else BehaviorBank.build(names, vocab, length, bank_size, seed + 1)
        judged = judge_bank if judge_bank is not None else BehaviorBank.build(names, vocab, length, 2 * bank_size, seed + 2)
        kept = sorted(set(keep) - {behavior})
        union = sorted(set(kept) | {behavior})
        aimed = union if op == "add" else kept
        delta = guided_edit(spec, params, train, [op], [behavior], [kept], steps, lr=lr, seed=seed, check=check,
                            rounds=rounds)
        edited = add_delta(params, delta)
        before = measure(spec, params, judged, [union])[0]
        after = measure(spec, edited, judged, [union])[0]
        verdict = judge(op, behavior, kept, before, after)
        accuracy = aimed_accuracy(spec, edited, judged, union, aimed, seed)
    finally:
        release(spec)
    return ({k: v[0].detach() for k, v in edited.items()},
            {"op": op, "behavior": behavior, "kept": kept, **asdict(verdict),
             "before": {"behavior": before.behavior, "fpr": before.fpr},
             "after": {"behavior": after.behavior, "fpr": after.fpr},
             "change": float(change_size(params, delta).sqrt()[0]), "aimed": aimed, "accuracy": accuracy,
             "judged_on": judged_on(judged), "judged_sequences": len(judged.x)})


def edit_foreign_model(store: ForeignStore, model_id: str, op: str, behavior: str, cfg: EditConfig,
                       out: ForeignStore) -> dict[str, Any]:
    """Guided edit of one foreign model, keeping its assigned behaviors (its manifest row), with ``cfg``'s steps,
    learning rate, refinement rounds, training bank and seed; checked and judged over the whole input space when it
    holds at most ``cfg.judge_max_sequences`` sequences. The edited model goes to ``out`` in the foreign store's own
    format (``out.subject`` reads it back), with a manifest row naming its parent, and ``out/<new id>/edit.json``
    holds the verdict. Returns what ``edit.json`` holds."""
    zc = store.read_meta()["config"]
    names, vocab, length = list(zc["behaviors"]), int(zc["vocab"]), int(zc["length"])
    row = store.read_manifest().set_index("model_id").loc[model_id]
    _open_edits(out, store, {"behaviors": names, "vocab": vocab, "length": length})
    subject = store.subject(model_id)
    edited, verdict = edit_module(subject, op, behavior, list(row["behaviors"]), names, steps=cfg.guided_steps,
                                  lr=cfg.guided_lr, rounds=cfg.guided_rounds, bank_size=cfg.editor.bank_per_behavior,
                                  seed=cfg.seed, check_bank=self_check_bank(names, vocab, length, cfg),
                                  judge_bank=edit_judging_bank(names, vocab, length, cfg))
    new_id = f"{model_id}.{op}-{behavior}"
    with torch.no_grad():
        for name, value in edited.items():
            subject.module.get_parameter(name).copy_(value)
    arch = str(subject.source["arch"])
    out.write_model(new_id, arch, dict(subject.source["args"]), subject.module)
    result = {"model_id": new_id, "parent_id": model_id, "arch": arch, "method": "guided", **verdict,
              "before": verdict["before"]["behavior"] | {"false_positive_rate": verdict["before"]["fpr"]},
              "after": verdict["after"]["behavior"] | {"false_positive_rate": verdict["after"]["fpr"]},
              "settings": {"steps": cfg.guided_steps, "lr": cfg.guided_lr, "rounds": cfg.guided_rounds,
                           "bank_per_behavior": cfg.editor.bank_per_behavior, "seed": cfg.seed},
              "foreign_zoo": str(store.root), "store": str(out.root), "code_version": code_version()}
    atomic_write_json(out.root / new_id / "edit.json", result)
    out.write_chunk(new_id, [{"model_id": new_id, "family": arch, "arch": arch, "behaviors": verdict["aimed"],
                              "test_acc": verdict["accuracy"], "role": "edited", "parent_id": model_id, "edit_op": op,
                              "edit_behavior": behavior, "edit_success": verdict["success"],
                              "lineage": str(row.get("lineage", model_id))}])
    return result


def _open_edits(out: ForeignStore, parent: ForeignStore, config: dict[str, Any]) -> None:
    """Start the foreign store of edits, or check that it holds edits of models with this vocabulary, length and
    behaviors (one line otherwise)."""
    if not (out.root / "foreign.json").is_file():
        out.write_meta({"config": config, "edited_from": str(parent.root), "code_version": code_version()})
    elif out.read_meta().get("config") != config:
        raise EditError(f"{out.root} holds edits of models with other behaviors, vocabulary or length; "
                        "give another --output-dir")
