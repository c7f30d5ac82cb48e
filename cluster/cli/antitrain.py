"""Command ``zoolens antitrain experiment NAME [RECIPE.yaml] [KEY=VALUE ...]``; ``add_commands`` registers it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cluster.cli.recipe import add_recipe_args, load_from_args, publish_dir

EXPERIMENT_NAMES = ("width", "accuracy", "erasure", "pruning", "memorization")


def add_commands(subparsers: Any) -> None:
    """Add ``antitrain experiment`` to the ``zoolens`` subparsers (the handler returns an exit code)."""
    anti = subparsers.add_parser("antitrain", help="antitraining: force a layer's information through a core of neurons")
    anti_sub = anti.add_subparsers(dest="antitrain_cmd", required=True)
    exp = anti_sub.add_parser("experiment", help="run an antitraining experiment; results go to its run directory and MLflow")
    exp.add_argument("name", choices=(*EXPERIMENT_NAMES, "all"))
    add_recipe_args(exp, "antitrain/full.yaml", "runs/antitraining/<recipe name>")
    exp.add_argument("--quick", action="store_true", help="shorthand for the recipe configs/antitrain/quick.yaml")
    exp.set_defaults(handler=cmd_antitrain_experiment)


def cmd_antitrain_experiment(args: argparse.Namespace) -> int:
    from cluster.stages.antitraining import run_experiment
    from zoo.experiments.antitraining import ExperimentConfig

    cfg = load_from_args(ExperimentConfig, args, "antitrain/quick.yaml" if args.quick else "antitrain/full.yaml")
    names = EXPERIMENT_NAMES if args.name == "all" else (args.name,)
    for name in names:
        result = run_experiment(name, cfg, tracking_uri=args.tracking_uri, out_dir=args.out, publish_to=publish_dir(args))
        print(f"{name}: {result['seconds']:.0f}s  {json.dumps(result['summary'])}")
        print(f"  results: {', '.join(result['paths'])}")
    return 0
