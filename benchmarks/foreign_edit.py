"""Guided add and remove on foreign models (``zoolens zoo foreign``) through the adapter, judged by the edit protocol.

    python benchmarks/foreign_edit.py --foreign FOREIGN_DIR --out edits.json [--per-arch 50] [--steps 1000]

Each model gets one add (a behavior it was not taught, drawn per model) and one remove (one of its own). The kept
set is the model's assigned behaviors (the label-free variant would keep the interpreter's reading; with reading
at 0.9+ exact-set accuracy the two mostly agree). Success rates per architecture, every number reported.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from interpreter.adapter_editing import edit_module
from zoo.foreign.store import ForeignStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--foreign", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-arch", type=int, default=50)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    store = ForeignStore(a.foreign)
    names = list(store.read_meta()["config"]["behaviors"])
    manifest = store.read_manifest()
    rng = np.random.default_rng(a.seed)
    rows = []
    t0 = time.perf_counter()
    for arch, group in manifest.groupby("arch"):
        for _, row in group.head(a.per_arch).iterrows():
            own = list(row["behaviors"])
            subject = store.subject(row["model_id"])
            add = str(rng.choice([b for b in names if b not in own]))
            remove = str(rng.choice(own))
            for op, b in (("add", add), ("remove", remove)):
                t = time.perf_counter()
                _, verdict = edit_module(subject, op, b, own, names, steps=a.steps, rounds=a.rounds, seed=a.seed)
                rows.append({"arch": arch, "model_id": row["model_id"], "op": op, "behavior": b,
                             "success": verdict["success"], "reasons": verdict["reasons"],
                             "seconds": time.perf_counter() - t})
                print(arch, row["model_id"], op, b, verdict["success"], verdict["reasons"], flush=True)
    summary = {}
    for arch in sorted({r["arch"] for r in rows}):
        for op in ("add", "remove"):
            sel = [r for r in rows if r["arch"] == arch and r["op"] == op]
            summary[f"{arch}/{op}"] = {"n": len(sel), "success": float(np.mean([r["success"] for r in sel]))}
    Path(a.out).write_text(json.dumps({"summary": summary, "rows": rows, "steps": a.steps, "rounds": a.rounds,
                                       "seconds": time.perf_counter() - t0}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
