"""Command-line arguments of commands that run one recipe: ``[RECIPE.yaml] [KEY=VALUE ...] [--out DIR] [--publish]``.

The recipe defaults to the command's own file under ``configs/``; ``key.path=value`` overrides
(:mod:`zoo.recipe`) change any field. A few old flags (``--quick``, ``--steps``, ...) survive as
shorthands: each names a recipe file or becomes an override, so the recipe stays the one source.
As with ``zoolens run CONFIG KEY=VALUE``, the overrides come right after the command's words, before
any ``--flag`` (argparse does not resume a positional list after an option).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from zoo.errors import ConfigError
from zoo.recipe import load_recipe

R = TypeVar("R", bound=BaseModel)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def add_recipe_args(p: argparse.ArgumentParser, default: str, run_dir: str) -> None:
    """The recipe and overrides (positional), ``--out``, ``--publish`` and ``--tracking-uri``."""
    p.add_argument("recipe", nargs="*", metavar="[RECIPE.yaml] [KEY=VALUE]",
                   help=f"recipe (default: configs/{default}) and key.path=value overrides, before any --flag")
    p.add_argument("--out", "--output-dir", dest="out", help=f"run directory for the results (default: {run_dir})")
    p.add_argument("--publish", action="store_true", help="also copy the result's md/json/png into docs/results/")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite under runs/)")


def load_from_args(cls: type[R], args: argparse.Namespace, default: str, shorthands: Sequence[str] = ()) -> R:
    """The recipe named on the command line (else ``configs/<default>``) with its overrides, then ``shorthands``."""
    words = list(args.recipe)
    if words and "=" not in words[0]:
        if getattr(args, "quick", False) or getattr(args, "full", False):
            raise ConfigError(f"give a recipe ({words[0]}) or --quick/--full, not both")
        path = Path(words.pop(0))
    else:
        path = CONFIGS / default
    return load_recipe(cls, path, [*words, *shorthands])


def publish_dir(args: argparse.Namespace) -> Path | None:
    """Where ``--publish`` copies results (None without it)."""
    from zoo.experiments.result import RESULTS_DIR  # pandas and matplotlib: only for the command that runs

    return RESULTS_DIR if args.publish else None
