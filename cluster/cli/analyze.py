"""Command ``zoolens analyze {llc,grokking,sae,patching} [RECIPE.yaml] [KEY=VALUE ...]``; ``add_commands`` registers it.

Each command reads a recipe (default ``configs/analyze/<command>.yaml``); the remaining flags are
shorthands for recipe files (``--quick``, ``--full``) or for overrides (``--steps``, ``--k``, ...).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from zoo.errors import ConfigError

from cluster.cli.recipe import add_recipe_args, load_from_args, publish_dir


def add_commands(subparsers: Any) -> None:
    """Add ``analyze`` and its four subcommands (each handler returns an exit code)."""
    analyze = subparsers.add_parser("analyze", help="developmental and dictionary-learning analyses (LLC, grokking, SAEs, patching)")
    sub = analyze.add_subparsers(dest="analyze_cmd", required=True)

    llc = sub.add_parser("llc", help="local learning coefficient by SGLD")
    llc.add_argument("what", choices=("validate", "trajectory", "zoo"),
                     help="validate: against closed forms; trajectory: across training checkpoints; zoo: every model of a zoo")
    add_recipe_args(llc, "analyze/llc_<what>.yaml", "runs/analysis/<name>; zoo: <zoo parent>/analysis/llc")
    llc.add_argument("--zoo", help="zoo directory (for 'zoo')")
    llc.add_argument("--quick", action="store_true", help="shorthand for the recipe configs/analyze/llc_<what>_quick.yaml")
    llc.add_argument("--steps", type=int, default=None, help="shorthand for sgld.steps=N (burn-in a quarter; zoo: a third)")
    llc.set_defaults(handler=cmd_llc)

    grok = sub.add_parser("grokking", help="modular-addition grokking with progress measures and lottery tickets")
    add_recipe_args(grok, "analyze/grokking.yaml", "runs/analysis/<name>")
    grok.add_argument("--full", action="store_true", help="shorthand for configs/analyze/grokking_full.yaml (the published setup; a GPU)")
    grok.add_argument("--quick", action="store_true", help="shorthand for configs/analyze/grokking_quick.yaml (seconds)")
    grok.add_argument("--sparsity", type=float, default=None, help="shorthand for sparsity=X (lottery-ticket pruning ratio)")
    grok.set_defaults(handler=cmd_grokking)

    sae = sub.add_parser("sae", help="TopK / ReLU+L1 sparse autoencoders and codebooks on every model of a zoo")
    sae.add_argument("--zoo", required=True, help="zoo directory")
    add_recipe_args(sae, "analyze/sae.yaml", "<zoo parent>/analysis/sae")
    sae.add_argument("--kinds", default=None, help="shorthand for kinds=topk,relu,codebook")
    sae.add_argument("--k", type=int, default=None, help="shorthand for k=N (active features / selected codes)")
    sae.set_defaults(handler=cmd_sae)

    patch = sub.add_parser("patching", help="Shapley-sampling neuron importance for every model of a zoo")
    patch.add_argument("--zoo", required=True, help="zoo directory")
    add_recipe_args(patch, "analyze/patching.yaml", "<zoo parent>/analysis/patching")
    patch.add_argument("--method", choices=("mean", "zero", "resample"), default=None, help="shorthand for method=...")
    patch.add_argument("--n-perms", type=int, default=None, help="shorthand for n_perms=N")
    patch.set_defaults(handler=cmd_patching)


def _shorthands(args: argparse.Namespace, **keys: str) -> list[str]:
    """``key=value`` overrides from the shorthand flags that were given (flag dest -> recipe key)."""
    return [f"{key}={getattr(args, dest)}" for dest, key in keys.items() if getattr(args, dest, None) is not None]


def _print(result: dict[str, Any]) -> None:
    print(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=1, default=str))


def cmd_llc(args: argparse.Namespace) -> int:
    from cluster.stages.analyze import analyze_zoo, run_analysis
    from zoo.experiments.llc import LLCTrajectoryConfig, LLCValidationConfig, llc_trajectory, llc_validation
    from zoo.experiments.zoo_analysis import LLCZooConfig

    recipe = f"analyze/llc_{args.what}{'_quick' if args.quick else ''}.yaml"
    steps = [] if args.steps is None else [f"sgld.steps={args.steps}",
                                           f"sgld.burnin={args.steps // (3 if args.what == 'zoo' else 4)}"]
    if args.what == "zoo":
        if not args.zoo:
            raise ConfigError("'zoolens analyze llc zoo' needs --zoo DIR")
        cfg = load_from_args(LLCZooConfig, args, recipe, steps)
        _print(analyze_zoo(cfg, args.zoo, args.tracking_uri, args.out, publish_dir(args)))
        return 0
    cls, fn = (LLCValidationConfig, llc_validation) if args.what == "validate" else (LLCTrajectoryConfig, llc_trajectory)
    _print(run_analysis(fn, load_from_args(cls, args, recipe, steps), "analyze.llc", args.tracking_uri, args.out,
                        publish_dir(args)))
    return 0


def cmd_grokking(args: argparse.Namespace) -> int:
    from cluster.stages.analyze import run_analysis
    from zoo.experiments.grokking import GrokkingConfig, grokking_experiment

    if args.full and args.quick:
        raise ConfigError("give --full or --quick, not both")
    recipe = "analyze/grokking_full.yaml" if args.full else "analyze/grokking_quick.yaml" if args.quick else "analyze/grokking.yaml"
    cfg = load_from_args(GrokkingConfig, args, recipe, _shorthands(args, sparsity="sparsity"))
    _print(run_analysis(grokking_experiment, cfg, "analyze.grokking", args.tracking_uri, args.out, publish_dir(args)))
    return 0


def cmd_sae(args: argparse.Namespace) -> int:
    from cluster.stages.analyze import analyze_zoo
    from zoo.experiments.zoo_analysis import SAEConfig

    cfg = load_from_args(SAEConfig, args, "analyze/sae.yaml", _shorthands(args, kinds="kinds", k="k"))
    _print(analyze_zoo(cfg, args.zoo, args.tracking_uri, args.out, publish_dir(args)))
    return 0


def cmd_patching(args: argparse.Namespace) -> int:
    from cluster.stages.analyze import analyze_zoo
    from zoo.experiments.zoo_analysis import PatchingConfig

    cfg = load_from_args(PatchingConfig, args, "analyze/patching.yaml", _shorthands(args, method="method", n_perms="n_perms"))
    _print(analyze_zoo(cfg, args.zoo, args.tracking_uri, args.out, publish_dir(args)))
    return 0
