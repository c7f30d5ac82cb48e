"""Score every edit method on the same add/remove/repair edits of held-out models, then the localization check.

See :mod:`interpreter.editing.protocol` for pass/fail and :mod:`interpreter.editing.methods` for the methods.
Every family is scored (``edit.families`` narrows it); a method with nothing to offer for an architecture (the
decoders outside the MLP family, task arithmetic without sibling pairs) is left out of that architecture's rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from interpreter.editing.baselines import task_vectors
from interpreter.editing.config import EditConfig
from interpreter.editing.context import (EditContext, EditError, check_bank, edit_groups, eval_bank, family_ids,
                                         fresh_bank, make_pool, read_sets, train_bank)
from interpreter.editing.decoder import add_delta
from interpreter.editing.editor import Pool, encode, failing_parts
from interpreter.editing.groups import load_groups
from interpreter.editing.localization import localization_table, localize
from interpreter.editing.methods import METHODS, EditRequest, Tools
from interpreter.editing.plan import EditSet, clean_rates, every_removal, plan_edit_sets
from interpreter.editing.neurons import change_metrics
from interpreter.editing.onepass import load_onepass
from interpreter.editing.protocol import ADD_MIN, flags_on, judge, rates_from_flags
from interpreter.editing.space import judged_on
from interpreter.editing.subspace import localize_subspace
from interpreter.editing.train import load_stage
from zoo.arch import Params
from zoo.behavior_bank import BehaviorBank


def evaluation_tools(ctx: EditContext, cfg: EditConfig, editor_dir: Path) -> Tools:
    """Every method's tools: the trained editor and steering decoder, the banks, the sibling task vectors."""
    editor, rec, steering = load_stage(ctx, editor_dir, cfg)
    bank = train_bank(ctx, cfg)
    library = training_library(ctx, cfg, bank) if "retrieval" in (cfg.methods or METHODS) else {}
    return Tools(cfg, ctx.names, editor, bank, check_bank(ctx, cfg), rec, steering, sibling_task_vectors(ctx),
                 load_onepass(editor_dir), library)


def training_library(ctx: EditContext, cfg: EditConfig, bank: BehaviorBank) -> dict[str, Pool]:
    """The interpreter's training models of ``cfg.families`` per architecture, read (the retrieval control's pool)."""
    return {g.spec.key(): make_pool(ctx, g, bank) for g in edit_groups(ctx, family_ids(ctx, ctx.train_ids, cfg.families))}


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


def request_for(ctx: EditContext, es: EditSet, tools: Tools, bank: BehaviorBank) -> EditRequest:
    """Read the edit set's models; for repair, name the behavior that looks corrupted and measure the clean twins."""
    g = es.group
    enc = encode(ctx.interp, g.spec, g.params, ctx.probes, tools.train_bank)
    if es.op == "repair":
        chosen = [ctx.names[i] for i in enc.corrupted_behavior(tools.editor.typical_profile).tolist()]
        es.clean = clean_rates(ctx, es, bank)
    else:
        chosen = list(es.behaviors)
    return EditRequest(es, enc, read_sets(ctx, enc), chosen)


def score_edit_set(ctx: EditContext, es: EditSet, tools: Tools, bank: BehaviorBank,
                   methods: list[str] | None = None, latents: list[dict] | None = None) -> list[dict]:
    """Every method's verdicts on one edit set, judged on ``bank`` (the whole input space where it is small), with
    each edit's relative L2 weight change, share of hidden neurons changed and largest per-matrix rank, and the
    method's seconds per edit (its wall time on the edit set over the set's edits).

    With ``latents``, the edits of ``cfg.latent_methods`` are also read again by the interpreter and appended
    there (:func:`latent_moves`), for the figure of edits in latent space."""
    request = request_for(ctx, es, tools, bank)
    g, unions = es.group, es.unions()
    before_flags = flags_on(g.spec, g.params, bank)  # once per edit set: every method is compared with it
    before = rates_from_flags(before_flags, bank, unions)
    check_before = before_flags if tools.check_bank is bank else flags_on(g.spec, g.params, tools.check_bank)
    where = judged_on(bank)
    rows = []
    for name in methods or list(METHODS):
        method = METHODS[name]
        t0 = time.perf_counter()
        delta = method(request, tools) if method.applies_to(g.spec, tools) else None
        seconds = (time.perf_counter() - t0) / len(es.behaviors)
        if delta is None:
            continue
        edited = add_delta(g.params, delta)
        after_flags = flags_on(g.spec, edited, bank)
        after = rates_from_flags(after_flags, bank, unions)
        sizes = change_metrics(g.spec, g.params, delta)
        checked = ~failing_parts(g.spec, g.params, delta, tools.check_bank, request.ops(), request.chosen, request.read,
                                 before=check_before, after=after_flags if tools.check_bank is bank else None).any(dim=1)
        for m, (have, b) in enumerate(zip(es.assigned(), es.behaviors)):
            v = judge(es.op, b, have, before[m], after[m], es.clean[m] if es.clean else None)
            rows.append({"method": name, "op": es.op, "behavior": b, "model_id": g.rows["model_id"][m],
                         "family": g.spec.family, "arch": g.spec.key(), "success": v.success, "target_rate": v.target_rate,
                         "before_rate": before[m].behavior[b], "worst_kept_drop": v.worst_kept_drop,
                         "fpr_rise": v.fpr_rise, "change": float(sizes["change"][m]),
                         "neurons_changed": float(sizes["neurons_changed"][m]), "max_rank": int(sizes["max_rank"][m]),
                         "chosen": request.chosen[m], "self_check": bool(checked[m]), "judged_on": where,
                         "judged_sequences": len(bank.x), "seconds": seconds, "reasons": "; ".join(v.reasons)})
        if latents is not None and name in tools.cfg.latent_methods:
            latents += latent_moves(ctx, es, request, tools, name, edited, rows[-len(es.behaviors):])
    return rows


def latent_moves(ctx: EditContext, es: EditSet, request: EditRequest, tools: Tools, method: str, edited: Params,
                 verdicts: list[dict]) -> list[dict]:
    """Where one method's edits of an edit set move the models in the interpreter's latent space: per edit, the
    latent before and after (the edited weights' signatures read again), the models' assigned behaviors and the
    verdict."""
    after = encode(ctx.interp, es.group.spec, edited, ctx.probes, tools.train_bank).latent
    return [{"method": method, "op": es.op, "behavior": v["behavior"], "model_id": v["model_id"],
             "assigned": list(have), "success": bool(v["success"]),
             "before": request.enc.latent[m].detach().numpy(), "after": after[m].detach().numpy()}
            for m, (have, v) in enumerate(zip(es.assigned(), verdicts))]


def held_out_ids(ctx: EditContext, cfg: EditConfig) -> list[str]:
    """The held-out models scored: those of ``cfg.families``, a seeded sample of ``cfg.max_test_models`` of them."""
    test_ids = family_ids(ctx, ctx.test_ids, cfg.families)  # the cap counts models of these families only
    if cfg.max_test_models and len(test_ids) > cfg.max_test_models:  # a sample, not the head: splits come sorted
        pick = np.random.default_rng(cfg.seed).choice(len(test_ids), cfg.max_test_models, replace=False)
        test_ids = [test_ids[i] for i in sorted(pick)]
    return test_ids


def evaluate_edits(ctx: EditContext, cfg: EditConfig, editor_dir: Path, progress: bool = False) -> dict[str, Any]:
    """Score every method on add/remove/repair edits of held-out models, then the localization check (by units and by
    a learned subspace, :mod:`interpreter.editing.subspace`).

    Returns the verdicts (one row per method and edit), the localization table, the training ceiling and the
    latent moves of ``cfg.latent_methods``' edits (:func:`latent_moves`).
    """
    from tqdm.auto import tqdm

    unknown = sorted(set(cfg.methods or []) - set(METHODS))
    if unknown:
        raise EditError(f"unknown edit method(s) {', '.join(unknown)} in edit.methods; known: {', '.join(METHODS)}")
    tools = evaluation_tools(ctx, cfg, editor_dir)
    bank = eval_bank(ctx, cfg)
    fresh = fresh_bank(ctx, cfg)  # the localization check resamples within a sample, as it was measured before
    rng = np.random.default_rng(cfg.seed)
    sets = [es for g in edit_groups(ctx, held_out_ids(ctx, cfg)) for es in plan_edit_sets(ctx, g, rng)]
    rows, loc, latents = [], [], []
    for es in tqdm(sets, desc="edit sets", disable=not progress):
        rows += score_edit_set(ctx, es, tools, bank, cfg.methods, latents)
        if es.op == "remove":  # every (model, assigned behavior) pair of the clean models
            every = every_removal(es)
            loc += localize(every.group, every.behaviors, tools.train_bank, fresh, cfg.localization_k, cfg.seed)
            loc += localize_subspace(every.group, every.behaviors, tools.train_bank, fresh, cfg.localization_k, cfg.seed)
    return {"verdicts": pd.DataFrame(rows), "localization": localization_table(loc) if loc else pd.DataFrame(),
            "ceiling": training_ceiling(ctx), "latents": latents}
