"""Edits per second of the one-pass editor, the semi-amortized editor and the guided edit, on the same held-out models.

    python benchmarks/edit_throughput.py configs/edit.yaml --output-dir RUN_DIR [--models 40] [KEY=VALUE ...]

Needs a run whose editor was trained (``zoolens edit train``). The held-out models are those ``zoolens edit
evaluate`` scores (a seeded sample of ``--models``), planned into the same add/remove/repair edit sets; every
method edits every set in this one process (one thread) and only its own call is timed (reading the models with the
interpreter is shared and not counted). Prints one line per method, then the summary as one JSON object (the last
line): edits, seconds, edits per second per method, and each method's speed-up over the guided edit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cluster.config import load_config
from interpreter.editing.context import edit_groups, eval_bank, open_context
from interpreter.editing.evaluate import evaluation_tools, held_out_ids, request_for
from interpreter.editing.methods import METHODS
from interpreter.editing.plan import plan_edit_sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    ap.add_argument("--output-dir", help="run directory (default: the config's output_dir)")
    ap.add_argument("--models", type=int, default=40, help="held-out models edited (a seeded sample)")
    ap.add_argument("--methods", default="onepass,onepass_refine,guided")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(a.config, [*a.overrides, f"edit.max_test_models={a.models}", f"edit.methods=[{a.methods}]"])
    root = Path(a.output_dir or cfg.output_dir)
    ctx = open_context(root / "zoo", root / "interpreter", cfg.signatures.probes.model_dump())
    tools = evaluation_tools(ctx, cfg.edit, root / "editor")
    bank = eval_bank(ctx, cfg.edit)
    rng = np.random.default_rng(cfg.edit.seed)
    sets = [es for g in edit_groups(ctx, held_out_ids(ctx, cfg.edit)) for es in plan_edit_sets(ctx, g, rng)]
    requests = [request_for(ctx, es, tools, bank) for es in sets]
    methods = a.methods.split(",")
    out = {"models": a.models, "edits": sum(len(r.chosen) for r in requests), "threads": torch.get_num_threads(),
           "methods": {}}
    for name in methods:
        t0 = time.perf_counter()
        for r in requests:
            METHODS[name](r, tools)
        seconds = time.perf_counter() - t0
        out["methods"][name] = {"seconds": seconds, "edits_per_second": out["edits"] / seconds}
        print(f"{name}: {out['edits']} edits in {seconds:.1f} s ({out['edits'] / seconds:.2f} edits/s)", flush=True)
    if "guided" in out["methods"]:
        base = out["methods"]["guided"]["seconds"]
        for row in out["methods"].values():
            row["speedup_over_guided"] = base / row["seconds"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
