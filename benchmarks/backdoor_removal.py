"""Backdoor removal (issue 27) on held-out backdoored models, judged over the whole input space.

    python benchmarks/backdoor_removal.py --zoo ZOO_DIR [--n 30] [--baseline]

Takes a seeded sample of the backdoored models on the held-out side of the pipeline's split (split_zoo, test
fraction 0.2, seed 0), runs ``remove_zoo_backdoor`` on each (trigger named by search, behaviors read from outputs,
the fine-tune) and counts how many pass the issue's rule (trigger rate <= 5% and every taught behavior within 2
points, against the true trigger). ``--baseline`` also runs the earlier fine-tune (1,500 steps of 256 at lr 3e-3)
on the same models, so the two recipes are compared in one run. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from cluster.stages.interpreter import split_zoo
from interpreter.editing.backdoor import RemoveBackdoorConfig, remove_zoo_backdoor
from zoo.store import ZooStore

RECIPES = {"current": RemoveBackdoorConfig(), "baseline": RemoveBackdoorConfig(steps=1500, batch_size=256, lr=3e-3)}


def held_out_backdoored(zoo_dir: str, n: int, seed: int) -> list[str]:
    """A seeded sample of n backdoored models from the held-out side of the pipeline's split."""
    store = ZooStore(zoo_dir)
    _, test = split_zoo(store, 0.2, 0)
    m = store.read_manifest(columns=["model_id", "trigger"])
    ids = sorted(set(m.loc[m["trigger"].notna(), "model_id"]) & set(test))
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:n]]


def summarize(rows: list[dict]) -> dict:
    """Counts of the issue's rule and its parts, and the median trigger rates."""
    return {"n": len(rows), "removed": sum(r["removed"] for r in rows),
            "trigger_rate_le_5pct": sum(r["after"]["trigger_rate"] <= 0.05 for r in rows),
            "behaviors_within_2pts": sum(r["max_behavior_shift"] <= 0.02 for r in rows),
            "neutralized": sum(r["neutralized"] for r in rows),
            "named_exactly": sum(r["named_exactly"] for r in rows),
            "median_trigger_rate_before": float(np.median([r["before"]["trigger_rate"] for r in rows])),
            "median_trigger_rate_after": float(np.median([r["after"]["trigger_rate"] for r in rows])),
            "median_max_behavior_shift": float(np.median([r["max_behavior_shift"] for r in rows]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", required=True, help="the zoo directory of a configs/backdoor.yaml run")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", action="store_true", help="also run the earlier fine-tune on the same models")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ids = held_out_backdoored(a.zoo, a.n, a.seed)
    recipes = ["current", "baseline"] if a.baseline else ["current"]
    rows: dict[str, list[dict]] = {r: [] for r in recipes}
    seconds = dict.fromkeys(recipes, 0.0)
    with tempfile.TemporaryDirectory() as out:
        for model_id in ids:
            for recipe in recipes:
                t = time.perf_counter()
                r = remove_zoo_backdoor(a.zoo, model_id, ZooStore(f"{out}/{recipe}"), RECIPES[recipe])
                seconds[recipe] += time.perf_counter() - t
                rows[recipe].append(r)
                print(recipe, model_id, "removed" if r["removed"] else "kept", f"trigger {r['after']['trigger_rate']:.3f}",
                      f"shift {r['max_behavior_shift']:.3f}", "read", r["behaviors_read"],
                      "taught", sorted(r["before"]["behaviors"]), flush=True)
    result = {r: {**summarize(rows[r]), "seconds_per_model": seconds[r] / max(len(ids), 1)} for r in recipes}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
