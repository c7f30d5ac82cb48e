"""Localization by units and by a learned subspace, side by side, on every clean held-out (model, behavior) pair.

    python benchmarks/localization.py CONFIG [KEY=VALUE ...] --output-dir RUN_DIR --models 120 --k 1 --out loc.parquet

RUN_DIR holds a run of CONFIG (zoo and interpreter); KEY=VALUE overrides must be those the run was made with. For a
seeded sample of held-out models (of every family, whatever ``edit.families`` says), every assigned behavior of
every clean model is located by the greedy unit search (`interpreter/editing/localization.py`) and by a learned
k-dimensional subspace (`interpreter/editing/subspace.py`), and checked as `zoolens edit evaluate` checks them.
Prints passes per family and method; the last line is one JSON object with the per-family table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from edit_run import open_run, run_arguments
from interpreter.editing.context import edit_groups, fresh_bank, train_bank
from interpreter.editing.evaluate import held_out_ids
from interpreter.editing.localization import localization_table, localize
from interpreter.editing.plan import every_removal, plan_edit_sets
from interpreter.editing.subspace import localize_subspace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_arguments(ap, models=120)
    ap.add_argument("--k", type=int, default=1, help="units ablated / dimensions of the subspace")
    ap.add_argument("--out", type=Path, default=Path("localization.parquet"))
    args = ap.parse_args()

    cfg, ctx, root = open_run(args)
    ecfg = cfg.edit.model_copy(update={"families": None})
    rank, fresh = train_bank(ctx, ecfg), fresh_bank(ctx, ecfg)
    rng = np.random.default_rng(ecfg.seed)
    rows = []
    for g in edit_groups(ctx, held_out_ids(ctx, ecfg)):
        for es in plan_edit_sets(ctx, g, rng):
            if es.op != "remove":  # the removal set holds every clean model
                continue
            every, t0 = every_removal(es), time.perf_counter()
            rows += localize(every.group, every.behaviors, rank, fresh, args.k, ecfg.seed)
            rows += localize_subspace(every.group, every.behaviors, rank, fresh, args.k, ecfg.seed)
            print(f"{g.spec.key()}: {len(every.behaviors)} pairs in {time.perf_counter() - t0:.0f} s", flush=True)
    pairs = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pairs.to_parquet(args.out)
    table = localization_table(rows)
    summary = (table.groupby(["family", "method"])
               .agg(passes=("passes", "sum"), behaviors=("passes", "size"), mean_drop=("drop_top", "mean"),
                    mean_random_drop=("drop_random", "mean"), others_move=("others_move_top", "mean"))
               .reset_index())
    print(summary.to_string(index=False))
    print(json.dumps({"run": str(root), "models": args.models, "k": args.k,
                      "pairs": len(pairs), "table": summary.to_dict(orient="records")}))


if __name__ == "__main__":
    main()
