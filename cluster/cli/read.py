"""Command ``zoolens read MODEL INTERPRETER``: read one model of any origin (see ``cluster.tracking.reader``).

Runs in this process and starts no Ray: one model, a few seconds to a minute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_commands(subparsers: Any) -> None:
    """Add ``read`` to the ``zoolens`` subparsers."""
    p = subparsers.add_parser(
        "read", help="read any model: behaviors it flags, predicted accuracy, carriers confirmed by ablation",
        description="zoolens read MODEL INTERPRETER [--weights W.safetensors] [--args ARGS.yaml] ... where MODEL is a "
                    "model id of the run's zoo, path/to/model.py:ClassName (with --weights and --args) or "
                    "hooked_transformer:CONFIG.yaml (with --weights), and INTERPRETER a run directory, an interpreter "
                    "directory or models:/zoolens-interpreter@champion")
    p.add_argument("model", help="zoo model id | path/to/model.py:ClassName | hooked_transformer:CONFIG.yaml")
    p.add_argument("interpreter", help="run directory, interpreter directory, or models:/NAME@ALIAS")
    p.add_argument("--weights", help="safetensors state dict of a class or HookedTransformer model")
    p.add_argument("--args", help="constructor arguments: a YAML file or inline YAML mapping (vocab/length keys are checked)")
    p.add_argument("--zoo", help="zoo directory or URI holding MODEL (default: RUN_DIR/zoo)")
    p.add_argument("--hook", action="append", metavar="MODULE", help="hook this module's output (repeatable; default rule otherwise)")
    p.add_argument("-k", type=int, default=3, help="carrier neurons per flagged behavior (default 3)")
    p.add_argument("--no-carriers", action="store_true", help="skip the carrier search and ablation check")
    p.add_argument("--output-dir", default=None, help="where read.json and carrier_map.png go (default: read-MODEL/)")
    p.add_argument("--tracking-uri", help="log to this MLflow tracking URI (default: MLFLOW_TRACKING_URI if set)")
    p.set_defaults(handler=cmd_read)


def _safe_name(model: str) -> str:
    stem = Path(model.split(":", 1)[-1]).stem if ":" in model else model
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "model"


def cmd_read(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cluster.tracking.reader import read
    from zoo.errors import ConfigError

    if args.k < 1:
        raise ConfigError(f"-k must be at least 1, got {args.k}")
    out_dir = Path(args.output_dir or f"read-{_safe_name(args.model)}")
    r = read(args.model, args.interpreter, weights=args.weights, args=args.args, zoo=args.zoo, hooks=args.hook, k=args.k,
             carriers=not args.no_carriers, out_dir=out_dir, tracking_uri=args.tracking_uri)
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"{r.model}: flags {', '.join(r.flagged) or 'nothing'}")
    for col in ("behavior", "p", "flagged", "carriers", "drop top-k", "drop random", "confirmed"):
        table.add_column(col)
    for b, p in sorted(r.behaviors.items(), key=lambda kv: -kv[1]):
        c = r.carriers.get(b)
        table.add_row(b, f"{p:.3f}", "yes" if b in r.flagged else "",
                      ", ".join(c["neurons"]) if c else "", f"{c['drop_top']:.2f}" if c else "",
                      f"{c['drop_random']:.2f}" if c else "", ("yes" if c["confirmed"] else "no") if c else "")
    console.print(table)
    if r.accuracy is not None:
        console.print(f"predicted accuracy under the flagged set: {r.accuracy:.3f}")
    if r.corrupted is not None:
        console.print(f"corrupted-label suspicion: {r.corrupted:.3f}")
    if r.backdoor is not None:
        kind = r.backdoor["trigger_kind"]
        console.print(f"backdoor probability: {r.backdoor['probability']:.3f} (trigger kind if backdoored: "
                      f"{kind['class']}, p={kind['probability']:.2f})")
        found = r.backdoor["search"]
        console.print(f"trigger search: largest flip rate {found['score']:.3f}, trigger named {found['trigger']['kind']} "
                      f"tokens {found['trigger']['tokens']} positions {found['trigger']['positions']} gap {found['trigger']['gap']}")
    for head in ("family", "depth", "width", "lr"):
        a = r.architecture.get(head)
        if a:
            note = "" if a["meaningful"] else " (not meaningful for a foreign architecture)"
            console.print(f"{head}: {a['class']} (p={a['probability']:.2f}){note}")
    console.print(f"wrote {out_dir / 'read.json'} and {out_dir / 'carrier_map.png'}")
    return 0
