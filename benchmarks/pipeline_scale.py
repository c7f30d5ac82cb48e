"""Every stage at two zoo sizes 10x apart: models/s and peak memory (driver plus Ray workers) per stage.

The zoo is the standard MLP cohort (2 hidden layers of 32, embedding 8) trained for one epoch on a small dataset,
and the interpreter for one epoch, so the times measure data movement (reading, shuffling, sharding signatures),
not model quality. Stages: zoo build (Ray actors), signature extraction (Ray Data), interpreter training (Ray
Data -> Ray Train, streamed), held-out evaluation (baselines and the shuffled-label control on at most
evaluation.max_train_models / max_test_models models; cross-family rotations off: one family). The baseline in the same run
is the 1x zoo: at 10x a stage should take at most 10x the time and at most 1.5x the peak memory. Memory is reported
two ways (benchmarks/peak_rss.py): summed RSS, which counts a shared page (Ray's object store, libraries) once per
process mapping it, and summed PSS, which counts each resident page once.

    python benchmarks/pipeline_scale.py [--models 25000] [--cohort 1000] [--quick] [--until STAGE]

Last line: one JSON object (per-stage ratios 10x / 1x).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, when run as a script

import ray  # noqa: E402

from cluster.config import EvalConfig, ProbeConfig  # noqa: E402
from cluster.runtime import quiet_ray_data  # noqa: E402
from cluster.stages.interpreter import evaluate_stage, train_stage  # noqa: E402
from cluster.stages.signatures import extract_signatures  # noqa: E402
from cluster.stages.zoo import build_zoo  # noqa: E402
from interpreter.config import InterpreterConfig  # noqa: E402
from zoo.config import ZooConfig  # noqa: E402
from peak_rss import PeakRSS  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

STAGES = ("zoo", "signatures", "interpreter_train", "interpreter_evaluate")


def zoo_config(n_models: int, cohort: int) -> ZooConfig:
    """The standard MLP cohort, one training epoch on 200 examples per model: the build's cost is data movement."""
    return ZooConfig(n_models=n_models, cohort_size=cohort, seed=0, vocab=7, length=7,
                     architectures=[{"family": "mlp", "depth": 2, "width": 32, "embed_dim": 8}],
                     n_train=200, n_test=50, epochs=1, batch_size=128)


def measure(fn: Callable[[], Any], n_models: int) -> dict[str, float]:
    """Seconds, models/s and the peak summed RSS (MiB) of this process and every Ray worker while `fn` runs."""
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "models_per_s": n_models / seconds, "peak_rss_mb": mem.peak / 2**20,
            "peak_pss_mb": mem.peak_pss / 2**20, "at_peak_mb": {k: round(v / 2**20) for k, v in mem.at_peak.most_common()}}


def run_scale(root: Path, n_models: int, cohort: int, actors: int, until: str = STAGES[-1]) -> dict[str, dict[str, float]]:
    """Run the stages (all four, or the first ones up to `until`: each needs the one before) on a fresh zoo of
    `n_models` under `root`."""
    zoo_dir, sig_dir, interp_dir = root / "zoo", root / "signatures", root / "interpreter"
    cfg = InterpreterConfig(epochs=1, patience=1)
    stages = {
        "zoo": lambda: build_zoo(zoo_config(n_models, cohort), zoo_dir, n_actors=actors, progress=False),
        "signatures": lambda: extract_signatures(zoo_dir, sig_dir, ProbeConfig(), actors),
        "interpreter_train": lambda: train_stage(zoo_dir, sig_dir, interp_dir, cfg, 0.2, 0),
        "interpreter_evaluate": lambda: evaluate_stage(zoo_dir, sig_dir, interp_dir, cfg, EvalConfig(cross_family=False)),
    }
    out = {}
    for stage in STAGES[: STAGES.index(until) + 1]:
        out[stage] = r = measure(stages[stage], n_models)
        print(f"{n_models} models {stage:22s} {r['models_per_s']:9.1f} models/s  {r['seconds']:8.1f} s  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MiB, PSS {r['peak_pss_mb']:7.0f} MiB "
              f"({', '.join(f'{k} {v}' for k, v in list(r['at_peak_mb'].items())[:6])})",
              flush=True)  # as each stage ends: a long run shows progress
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=25_000, help="models in the 1x zoo (the 10x zoo has ten times more)")
    ap.add_argument("--cohort", type=int, default=1000)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1x = 200 models (a smoke run)")
    ap.add_argument("--until", choices=STAGES, default=STAGES[-1], help="the last stage to run (default: all)")
    args = ap.parse_args(argv)
    if args.models < 20 or args.cohort < 1:
        print("--models must be at least 20 and --cohort at least 1", file=sys.stderr)
        raise SystemExit(2)
    n1 = 200 if args.quick else args.models
    cohort = min(args.cohort, n1)
    quiet_ray_data()
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 10):  # a fresh Ray instance each: the 1x run's idle workers and actors must not count at 10x
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
            results[f"{scale}x"] = run_scale(Path(tmp) / f"{scale}x", n1 * scale, cohort, args.actors, args.until)
            ray.shutdown()
    one, ten = results["1x"], results["10x"]
    summary: dict[str, Any] = {"models_1x": n1, "models_10x": 10 * n1, "cpus": os.cpu_count()}
    ran = list(one)
    for stage in ran:
        summary[stage] = {
            "models_per_s_1x": one[stage]["models_per_s"], "models_per_s_10x": ten[stage]["models_per_s"],
            "time_ratio_10x": ten[stage]["seconds"] / one[stage]["seconds"],
            "peak_rss_mb_1x": one[stage]["peak_rss_mb"], "peak_rss_mb_10x": ten[stage]["peak_rss_mb"],
            "peak_rss_ratio_10x": ten[stage]["peak_rss_mb"] / one[stage]["peak_rss_mb"],
            "peak_pss_mb_1x": one[stage]["peak_pss_mb"], "peak_pss_mb_10x": ten[stage]["peak_pss_mb"],
            "peak_pss_ratio_10x": ten[stage]["peak_pss_mb"] / one[stage]["peak_pss_mb"],
            "at_peak_mb_1x": one[stage]["at_peak_mb"], "at_peak_mb_10x": ten[stage]["at_peak_mb"],
        }
    for measure_ in ("rss", "pss"):  # summed RSS counts shared pages once per process; PSS counts each page once
        summary[f"all_within_goal_{measure_}"] = all(
            summary[s]["time_ratio_10x"] <= 10 and summary[s][f"peak_{measure_}_ratio_10x"] <= 1.5 for s in ran)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
