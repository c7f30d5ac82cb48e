"""Command ``zoolens zoo foreign CONFIG [KEY=VALUE ...] --output-dir DIR``: train a zoo of foreign architectures
(LSTM, 1-D CNN, residual MLP, HookedTransformer; ``zoo.foreign``) on Ray actors and read their signatures."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(zoo_subparsers: Any) -> None:
    """Add ``foreign`` to the ``zoolens zoo`` subcommands."""
    p = zoo_subparsers.add_parser("foreign", help="train foreign architectures (LSTM, CNN, residual MLP, HookedTransformer) "
                                                  "one model at a time on Ray actors, then read their signatures")
    p.add_argument("config", help="foreign zoo YAML (e.g. configs/foreign.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any field, e.g. n_per_arch=40")
    p.add_argument("--output-dir", required=True, help="the foreign zoo directory (reruns resume)")
    p.add_argument("--actors", type=int, default=None, help="training actors (default: one per CPU)")
    p.add_argument("--no-signatures", action="store_true", help="train only")
    p.set_defaults(handler=cmd_foreign)


def cmd_foreign(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cluster.config import RayConfig
    from cluster.runtime import init_ray
    from cluster.stages.foreign import build_foreign, extract_foreign_signatures
    from zoo.foreign.train import ForeignZooConfig
    from zoo.recipe import load_recipe

    cfg = load_recipe(ForeignZooConfig, args.config, args.overrides)
    init_ray(RayConfig())
    out = Path(args.output_dir)
    summary = build_foreign(cfg, out, args.actors)
    print(f"foreign zoo: {summary['n_models']} models in {summary['foreign_dir']} "
          f"({summary['models_trained']} trained now, {summary['seconds']:.0f} s)")
    if not args.no_signatures:
        sig = extract_foreign_signatures(out, out / "signatures", cfg.probe_set())
        print(f"signatures: {sig['n_models']} models in {sig['signatures_dir']}")
    return 0
