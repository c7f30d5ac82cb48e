"""Command ``zoolens analyze {llc,grokking,sae,patching}``; ``add_commands`` registers it on the zoolens subparsers."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_commands(subparsers: Any) -> None:
    """Add ``analyze`` and its four subcommands (each handler returns an exit code)."""
    analyze = subparsers.add_parser("analyze", help="developmental and dictionary-learning analyses (LLC, grokking, SAEs, patching)")
    sub = analyze.add_subparsers(dest="analyze_cmd", required=True)

    def common(p: argparse.ArgumentParser, results: bool = True) -> None:
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite under runs/)")
        if results:
            p.add_argument("--out", default="docs/results", help="directory for the markdown/json/png results (default: docs/results)")

    llc = sub.add_parser("llc", help="local learning coefficient by SGLD")
    llc.add_argument("what", choices=("validate", "trajectory", "zoo"),
                     help="validate: against closed forms; trajectory: across training checkpoints; zoo: every model of a zoo")
    llc.add_argument("--zoo", help="zoo directory (for 'zoo')")
    llc.add_argument("--quick", action="store_true", help="seconds-long version")
    llc.add_argument("--steps", type=int, default=None, help="SGLD steps (validate: default 40000; zoo: default 1500)")
    llc.add_argument("--num-actors", type=int, default=2)
    common(llc)
    llc.set_defaults(handler=cmd_llc)

    grok = sub.add_parser("grokking", help="modular-addition grokking with progress measures and lottery tickets")
    grok.add_argument("--full", action="store_true", help="the published setup (p=113, 1-layer transformer, 40k steps; for a GPU)")
    grok.add_argument("--quick", action="store_true", help="seconds-long smoke version")
    grok.add_argument("--sparsity", type=float, default=0.6, help="lottery-ticket pruning ratio (default 0.6)")
    grok.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    common(grok)
    grok.set_defaults(handler=cmd_grokking)

    sae = sub.add_parser("sae", help="TopK / ReLU+L1 sparse autoencoders and codebooks on every model of a zoo")
    sae.add_argument("--zoo", required=True, help="zoo directory")
    sae.add_argument("--kinds", default="topk,relu,codebook", help="comma-separated dictionary kinds")
    sae.add_argument("--hook", default=None, help="hook point (default: the last hidden layer)")
    sae.add_argument("--expansion", type=int, default=4, help="features per neuron (default 4)")
    sae.add_argument("--k", type=int, default=4, help="active features (topk) / selected codes (codebook)")
    sae.add_argument("--steps", type=int, default=1500)
    sae.add_argument("--num-actors", type=int, default=2)
    common(sae)
    sae.set_defaults(handler=cmd_sae)

    patch = sub.add_parser("patching", help="Shapley-sampling neuron importance for every model of a zoo")
    patch.add_argument("--zoo", required=True, help="zoo directory")
    patch.add_argument("--hook", default=None, help="hook point (default: the last hidden layer)")
    patch.add_argument("--method", choices=("mean", "zero", "resample"), default="mean", help="how absent neurons are ablated")
    patch.add_argument("--n-perms", type=int, default=4, help="sampled permutations per model")
    patch.add_argument("--num-actors", type=int, default=2)
    common(patch, results=False)
    patch.set_defaults(handler=cmd_patching)


def _print(result: dict[str, Any]) -> None:
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "lottery_rows")}, indent=1, default=str))


def cmd_llc(args: argparse.Namespace) -> int:
    from cluster import analyze_stage as st

    if args.what == "validate":
        kw = {"steps": args.steps} if args.steps else {}
        _print(st.llc_validation(args.out, args.tracking_uri, quick=args.quick, **kw))
    elif args.what == "trajectory":
        _print(st.llc_trajectory("runs/analysis", args.tracking_uri, quick=args.quick))
    else:
        if not args.zoo:
            print("error: 'zoolens analyze llc zoo' needs --zoo DIR")
            return 2
        sgld = {"steps": args.steps or (200 if args.quick else 1500), "burnin": (args.steps or (200 if args.quick else 1500)) // 3}
        _print(st.analyze_zoo("llc", args.zoo, tracking_uri=args.tracking_uri, num_actors=args.num_actors, options={"sgld": sgld}))
    return 0


def cmd_grokking(args: argparse.Namespace) -> int:
    from cluster.analyze_stage import grokking_experiment

    _print(grokking_experiment(args.out, args.tracking_uri, full=args.full, quick=args.quick, sparsity=args.sparsity, device=args.device))
    return 0


def cmd_sae(args: argparse.Namespace) -> int:
    from cluster.analyze_stage import analyze_zoo

    options = {"kinds": [k for k in args.kinds.split(",") if k], "hook": args.hook, "expansion": args.expansion, "k": args.k,
               "steps": args.steps}
    _print(analyze_zoo("sae", args.zoo, results_dir=args.out, tracking_uri=args.tracking_uri, num_actors=args.num_actors, options=options))
    return 0


def cmd_patching(args: argparse.Namespace) -> int:
    from cluster.analyze_stage import analyze_zoo

    options = {"hook": args.hook, "method": args.method, "n_perms": args.n_perms}
    _print(analyze_zoo("patching", args.zoo, tracking_uri=args.tracking_uri, num_actors=args.num_actors, options=options))
    return 0
