"""One edit of one zoo model, written with its lineage to a zoo store (what ``zoolens edit MODEL --add B`` runs)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from interpreter.editing.config import EditConfig
from interpreter.editing.context import EditContext, EditError, check_bank, eval_bank, read_sets, train_bank
from interpreter.editing.decoder import add_delta
from interpreter.editing.editor import CHECK_PARTS, change_size, code_op, encode, failing_parts
from interpreter.editing.groups import ArchGroup, load_groups
from interpreter.editing.methods import METHODS, EditRequest, Tools
from interpreter.editing.onepass import load_onepass
from interpreter.editing.plan import EditSet
from interpreter.editing.protocol import aimed_accuracy, measure
from interpreter.editing.train import load_stage
from zoo.behaviors import get_behavior
from zoo.lineage import manifest_lineage
from zoo.store import ZooStore, model_sha256
from zoo.version import code_version

APPLY_METHODS = ("guided", "decoder", "onepass", "onepass_refine")  # the label-free methods that need only the trained editor


def edit_model(ctx: EditContext, cfg: EditConfig, editor_dir: Path, out: ZooStore, model_id: str, op: str,
               behavior: str | None, method: str = "guided") -> dict[str, Any]:
    """Edit one model of the zoo and write the result, with its lineage, to the zoo store ``out``.

    Uses the model's weights and signature and the interpreter only; the before/after rates printed
    come from the whole input space (a fresh sample where it is too large) and are a report, not an input.
    """
    if op != "repair" and behavior not in ctx.names:
        get_behavior(behavior)  # an unknown name gets the behavior registry's own one-line error
        raise EditError(f"behavior '{behavior}' is not one of this zoo's behaviors: {', '.join(ctx.names)}")
    if method not in APPLY_METHODS:
        raise EditError(f"unknown edit method '{method}' ({', '.join(APPLY_METHODS)})")
    groups = load_groups(ctx.store, [model_id])
    if not groups:
        raise EditError(f"model '{model_id}' is not in the zoo at {ctx.store.uri}")
    group, edit = groups[0], METHODS[method]
    editor, _, _ = load_stage(ctx, editor_dir, cfg)
    tools = Tools(cfg, ctx.names, editor, train_bank(ctx, cfg), check_bank(ctx, cfg), onepass=load_onepass(editor_dir))
    if not edit.applies_to(group.spec, tools):
        raise EditError(edit.why_not(group.spec))
    enc = encode(ctx.interp, group.spec, group.params, ctx.probes, tools.train_bank)
    read = read_sets(ctx, enc)[0]
    target = ctx.names[int(enc.corrupted_behavior(editor.typical_profile)[0])] if op == "repair" else behavior
    delta = edit(EditRequest(EditSet(op, group, [target]), enc, [read], [target]), tools)
    new = add_delta(group.params, delta)
    missed = failing_parts(group.spec, group.params, delta, tools.check_bank, [code_op(op)], [target], [read])[0].tolist()
    self_check = ", ".join(part for part, bad in zip(CHECK_PARTS, missed) if bad) or "passed"
    after_set = sorted(set(read) - {target}) if op == "remove" else sorted(set(read) | {target})
    fresh = eval_bank(ctx, cfg)
    union = sorted(set(read) | {target})
    before, after = measure(group.spec, group.params, fresh, [union])[0], measure(group.spec, new, fresh, [union])[0]
    new_id = f"{model_id}.{op}-{target}"
    row = _edited_row(ctx, group, new_id, model_id, op, target, method, after_set, editor_dir)
    row["test_acc"] = aimed_accuracy(group.spec, new, fresh, union, after_set, cfg.seed)
    row["sha256"] = model_sha256(new, 0)
    row["edit_self_check"] = self_check
    if not out.has_meta():
        out.write_meta({"edited_from": ctx.store.uri, "code_version": code_version()})
    out.write_cohort(row["cohort_id"], group.spec, new, [row])
    return {"model_id": new_id, "parent_id": model_id, "op": op, "behavior": target, "method": method,
            "interpreter_reads": read, "before": before.behavior | {"false_positive_rate": before.fpr},
            "after": after.behavior | {"false_positive_rate": after.fpr},
            "change": float(change_size(group.params, delta).sqrt()[0]), "self_check": self_check, "store": out.uri}


def _edited_row(ctx: EditContext, group: ArchGroup, new_id: str, parent: str, op: str, behavior: str,
                method: str, behaviors: list[str], editor_dir: Path) -> dict[str, Any]:
    """The manifest row of an edited model: what it is, and where it came from."""
    parent_row = group.rows.iloc[0]
    editor_hash = hashlib.sha256((editor_dir / "editor.safetensors").read_bytes()).hexdigest()[:16]
    return {"model_id": new_id, "cohort_id": "c_edit_" + hashlib.sha256(new_id.encode()).hexdigest()[:12],
            "family": group.spec.family, "arch": group.spec.key(), "spec": group.spec.model_dump_json(),
            "depth": group.spec.depth, "width": group.spec.width, "activation": group.spec.activation,
            "behaviors": behaviors, "role": "edited", "parent_id": parent, "edit_op": op, "edit_behavior": behavior,
            "lineage": str(manifest_lineage(group.rows.iloc[:1]).iloc[0]),  # an edit stays with its parent's lineage
            "edit_method": method, "interpreter_version": ctx.interpreter_version(), "editor_version": editor_hash,
            "parent_test_acc": float(parent_row["test_acc"]), "index": 0,
            "code_version": code_version()}
