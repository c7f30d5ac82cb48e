"""Commands ``zoolens antitrain experiment NAME`` and ``zoolens tune SWEEP.yaml``; ``add_commands`` registers them."""

from __future__ import annotations

import argparse
import json
from typing import Any

EXPERIMENT_NAMES = ("width", "accuracy", "erasure", "pruning", "memorization")


def add_commands(subparsers: Any) -> None:
    """Add ``antitrain`` and ``tune`` to the ``zoolens`` subparsers (each handler returns an exit code)."""
    anti = subparsers.add_parser("antitrain", help="antitraining: force a layer's information through a core of neurons")
    anti_sub = anti.add_subparsers(dest="antitrain_cmd", required=True)
    exp = anti_sub.add_parser("experiment", help="run an antitraining experiment; results go to MLflow and docs/results/")
    exp.add_argument("name", choices=(*EXPERIMENT_NAMES, "all"))
    exp.add_argument("--quick", action="store_true", help="seconds-long version (2 seeds, few epochs)")
    exp.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else runs/antitraining/mlflow.db)")
    exp.add_argument("--out", default="docs/results", help="directory for the markdown/json/png results (default: docs/results)")
    exp.set_defaults(handler=cmd_antitrain_experiment)

    tune = subparsers.add_parser("tune", help="run a Ray Tune sweep described by a YAML file (e.g. tune_configs/antitraining.yaml)")
    tune.add_argument("sweep", help="sweep YAML")
    tune.add_argument("--resume", action="store_true", help="continue a stopped sweep: keep finished trials, finish the rest")
    tune.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the sweep's storage dir)")
    tune.set_defaults(handler=cmd_tune)


def cmd_antitrain_experiment(args: argparse.Namespace) -> int:
    from cluster.antitraining_stage import run_experiment

    names = EXPERIMENT_NAMES if args.name == "all" else (args.name,)
    for name in names:
        result = run_experiment(name, quick=args.quick, tracking_uri=args.tracking_uri, out_dir=args.out)
        print(f"{name}: {result['seconds']:.0f}s  {json.dumps(result['summary'])}")
        print(f"  results: {', '.join(result['paths'])}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from cluster.tune import run_tune

    summary = run_tune(args.sweep, resume=args.resume, tracking_uri=args.tracking_uri)
    print(json.dumps(summary, indent=1, default=str))
    return 0
