"""Command ``zoolens tune SWEEP.yaml [KEY=VALUE ...] [--resume]``; ``add_commands`` registers it."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_commands(subparsers: Any) -> None:
    """Add ``tune`` to the ``zoolens`` subparsers (the handler returns an exit code)."""
    tune = subparsers.add_parser("tune", help="run a Ray Tune sweep described by a YAML file (e.g. tune_configs/antitraining.yaml)")
    tune.add_argument("sweep", help="sweep YAML")
    tune.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                      help="override any field of the sweep, e.g. num_samples=4 search_space.width=32")
    tune.add_argument("--resume", action="store_true", help="continue a stopped sweep: keep finished trials, finish the rest")
    tune.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the sweep's storage dir)")
    tune.set_defaults(handler=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from cluster.stages.tune import run_tune

    summary = run_tune(args.sweep, resume=args.resume, tracking_uri=args.tracking_uri, overrides=args.overrides)
    print(json.dumps(summary, indent=1, default=str))
    return 0
