"""Score edit methods, and variants of the guided edit's confinement, on the same held-out models of a run.

    python benchmarks/edit_variants.py CONFIG [KEY=VALUE ...] --output-dir RUN_DIR --models 30 \
        --methods guided,guided_targeted --variant '{"name": "rank2", "rank": 2, "shrink": 4}' --out verdicts.parquet

RUN_DIR holds a run of CONFIG (zoo, interpreter and editor: `zoolens run CONFIG` with `edit.enabled`, or the
stages one by one); KEY=VALUE overrides must be those the run was made with (the probe set must match). Every edit is
made and judged as `zoolens edit evaluate` does it (`score_edit_set`: over the whole input space where it is small).
A variant is the guided edit with a :class:`~interpreter.editing.editor.Confinement` built from its keys: ``share``
(of each layer's neurons, B's carriers first, as guided_targeted; left out with ``rank``), ``penalty`` (default
1.0), ``budget``, ``shrink`` and ``rank``, and optionally ``steps``, ``lr`` and ``rounds``. Writes every verdict to
``--out``, prints a table per method and operation; the last line is one JSON object with the same table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from edit_run import open_run, run_arguments
from interpreter.editing import methods as registry
from interpreter.editing.context import edit_groups, eval_bank
from interpreter.editing.editor import Confinement
from interpreter.editing.evaluate import evaluation_tools, held_out_ids, score_edit_set
from interpreter.editing.methods import EditMethod, EditRequest, Tools, guided_confined
from interpreter.editing.plan import plan_edit_sets
from interpreter.editing.targeted import targeted_mask


def variant_method(v: dict) -> EditMethod:
    """The guided edit under the confinement a variant's keys describe (and its steps, lr and rounds, if given)."""

    def edit(r: EditRequest, t: Tools) -> dict[str, torch.Tensor]:
        c = t.cfg
        mask = None if v.get("rank") else targeted_mask(r.spec, r.params, t.train_bank, r.ops(), r.chosen, r.read,
                                                        v.get("share", c.targeted_share), c.seed)
        confine = Confinement(mask, v.get("penalty", 1.0), v.get("budget"), v.get("shrink", 0), v.get("rank"))
        schedule = {k: v[name] for k, name in (("guided_steps", "steps"), ("guided_lr", "lr"), ("guided_rounds", "rounds"))
                    if name in v}
        return guided_confined(r, replace(t, cfg=c.model_copy(update=schedule)), confine)

    return EditMethod(edit)


def table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per method and operation: edits, success, median relative change, share of neurons changed and rank."""
    return (verdicts.assign(agree=verdicts["success"] == verdicts["self_check"])
            .groupby(["method", "op"])
            .agg(n=("success", "size"), success=("success", "mean"), median_change=("change", "median"),
                 median_neurons_changed=("neurons_changed", "median"), median_max_rank=("max_rank", "median"),
                 check_agrees=("agree", "mean"))
            .reset_index())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_arguments(ap, models=30)
    ap.add_argument("--methods", default="", help="registered edit methods, comma-separated")
    ap.add_argument("--variant", action="append", default=[], help="a JSON object (see the module docstring)")
    ap.add_argument("--ops", default="add,remove,repair")
    ap.add_argument("--archs", default="", help="architecture keys to edit, comma-separated (default: every one sampled)")
    ap.add_argument("--out", type=Path, default=Path("edit_variants.parquet"))
    args = ap.parse_args()

    cfg, ctx, root = open_run(args)
    ecfg = cfg.edit
    tools = evaluation_tools(ctx, ecfg.model_copy(update={"methods": ["guided"]}), root / "editor")
    bank = eval_bank(ctx, ecfg)
    names = [m for m in args.methods.split(",") if m]
    for spec in args.variant:
        v = json.loads(spec)
        registry.METHODS[v["name"]] = variant_method(v)
        names.append(v["name"])
    rng = np.random.default_rng(ecfg.seed)
    archs = set(filter(None, args.archs.split(",")))
    groups = [g for g in edit_groups(ctx, held_out_ids(ctx, ecfg)) if not archs or g.spec.key() in archs]
    sets = [es for g in groups for es in plan_edit_sets(ctx, g, rng) if es.op in args.ops.split(",")]
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for es in sets:
        t0 = time.perf_counter()
        rows += score_edit_set(ctx, es, tools, bank, names)
        pd.DataFrame(rows).to_parquet(args.out)  # after every set: a long run stopped early keeps what it scored
        print(f"{es.group.spec.key()} {es.op}: {len(es.behaviors)} edits in {time.perf_counter() - t0:.0f} s", flush=True)
    verdicts = pd.DataFrame(rows)
    result = table(verdicts)
    print(result.to_string(index=False))
    print(json.dumps({"run": str(root), "models": args.models, "judged_on": sorted(set(verdicts["judged_on"])),
                      "table": result.to_dict(orient="records")}))


if __name__ == "__main__":
    main()
