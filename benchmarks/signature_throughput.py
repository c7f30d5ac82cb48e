"""Signature extraction throughput and memory: the Ray Data stream at 1x and 10x zoo size.

Builds two synthetic zoos of the standard MLP (2 hidden layers of 32; weights from
each model's seed, untrained: extraction cost does not depend on training), runs
the real extraction stage over each, and reports models/s and the peak resident
memory of the driver plus every Ray worker. Baseline in the same run: the same
features computed one model at a time (a plain per-model loop).

    python benchmarks/signature_throughput.py [--models 5000] [--cohort 1000] [--quick]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402

from cluster.config import ProbeConfig  # noqa: E402
from cluster.stages.signatures import extract_signatures  # noqa: E402
from zoo.arch import ArchSpec  # noqa: E402
from zoo.behaviors import behavior_names  # noqa: E402
from zoo.config import ZooConfig  # noqa: E402
from zoo.families import get_family  # noqa: E402
from zoo.probes import make_probe_set  # noqa: E402
from zoo.signatures import cohort_signatures  # noqa: E402
from zoo.store import ZooStore, model_sha256  # noqa: E402
from peak_rss import PeakRSS  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

SPEC = ArchSpec(family="mlp", depth=2, width=32, embed_dim=8)


def synthetic_zoo(root: Path, n_models: int, cohort: int) -> ZooStore:
    """A zoo store of untrained standard MLPs, written exactly as the build stage writes them."""
    store = ZooStore(root)
    cfg = ZooConfig(n_models=n_models, cohort_size=cohort)
    store.write_meta({"config": cfg.model_dump(mode="json"), "fingerprint": cfg.fingerprint()})
    family = get_family(SPEC)
    for c, start in enumerate(range(0, n_models, cohort)):
        ids = list(range(start, min(start + cohort, n_models)))
        params = family.init(SPEC, ids)
        rows = [{"model_id": f"m{i:07d}", "sha256": model_sha256(params, m), "behaviors": ["palindrome"],
                 "family": "mlp", "arch": SPEC.key(), "test_acc": 0.5} for m, i in enumerate(ids)]
        store.write_cohort(f"c{c:05d}", SPEC, params, rows)
    return store


def stream(store: ZooStore, out: Path, actors: int) -> dict[str, float]:
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        info = extract_signatures(store.root, out, ProbeConfig(), actors)
        seconds = time.perf_counter() - t0
    return {"models": info["n_models"], "seconds": seconds, "models_per_s": info["n_models"] / seconds,
            "peak_rss_mb": mem.peak / 2**20}


def per_model_baseline(store: ZooStore, n: int) -> float:
    """models/s when each model is loaded and read on its own (no cohort batching)."""
    probes = make_probe_set(behavior_names(), 7, 7)
    spec, params, manifest = store.load_cohort(store.finished_cohorts()[0])
    t0 = time.perf_counter()
    for m in range(n):
        cohort_signatures(spec, {k: v[m : m + 1] for k, v in params.items()}, probes)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=5000, help="models in the 1x zoo")
    ap.add_argument("--cohort", type=int, default=1000)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1x = 1,000 models (a smoke run)")
    args = ap.parse_args()
    n1 = 1000 if args.quick else args.models
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = {}
        for scale in (1, 10):
            t0 = time.perf_counter()
            store = synthetic_zoo(tmp / f"zoo{scale}x", n1 * scale, args.cohort)
            print(f"built {scale}x zoo ({n1 * scale} models) in {time.perf_counter() - t0:.1f}s", flush=True)
            results[f"{scale}x"] = stream(store, tmp / f"sig{scale}x", args.actors)
            print(f"{scale}x: {json.dumps(results[f'{scale}x'])}", flush=True)
        baseline = per_model_baseline(ZooStore(tmp / "zoo1x"), 200)
    ray.shutdown()
    summary = {
        "family": "mlp",
        "models_per_s": results["10x"]["models_per_s"],
        "models_per_s_1x": results["1x"]["models_per_s"],
        "baseline_models_per_s": baseline,
        "speedup": results["10x"]["models_per_s"] / baseline,
        "peak_rss_mb_1x": results["1x"]["peak_rss_mb"],
        "peak_rss_mb_10x": results["10x"]["peak_rss_mb"],
        "peak_rss_ratio_10x": results["10x"]["peak_rss_mb"] / results["1x"]["peak_rss_mb"],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
