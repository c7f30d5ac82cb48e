"""Commands ``zoolens edit train|evaluate CONFIG`` and ``zoolens edit MODEL --add B | --remove B | --repair``."""

from __future__ import annotations

import argparse
from typing import Any

from zoo.errors import ConfigError

DEFAULT_CONFIG = "configs/demo.yaml"


def add_commands(subparsers: Any, add_common: Any) -> None:
    """Add ``edit`` to the ``zoolens`` subparsers (``add_common`` adds --tracking-uri, --output-dir, --no-progress)."""
    edit = subparsers.add_parser(
        "edit", help="edit behaviors in working weights, or train/evaluate the editor",
        description="zoolens edit train CONFIG | zoolens edit evaluate CONFIG | "
                    "zoolens edit MODEL (--add B | --remove B | --repair) [--config CONFIG]")
    edit.add_argument("target", help="'train', 'evaluate', or the id of a model in the run's zoo")
    edit.add_argument("config", nargs="?", help=f"pipeline YAML (default for a model edit: {DEFAULT_CONFIG})")
    edit.add_argument("--config", dest="config_opt", metavar="CONFIG", help="pipeline YAML of the run the model belongs to")
    what = edit.add_mutually_exclusive_group()
    what.add_argument("--add", metavar="B", help="make the model also flag behavior B")
    what.add_argument("--remove", metavar="B", help="make the model stop flagging behavior B")
    what.add_argument("--repair", action="store_true", help="restore the behavior whose labels were corrupted")
    edit.add_argument("--method", choices=("guided", "decoder"), default="guided",
                      help="guided: decode by optimization against the forward pass (default); decoder: one decoder pass")
    edit.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite in the run dir)")
    edit.add_argument("--output-dir", help="run directory (overrides output_dir in the config)")
    edit.add_argument("--no-progress", action="store_true", help="hide progress bars")
    edit.add_argument("--zoo", help="zoo directory or URI (default: RUN_DIR/zoo)")
    edit.set_defaults(handler=cmd_edit)


def cmd_edit(args: argparse.Namespace) -> int:
    from cluster.cli import _pipeline
    from cluster.report import print_edit_summary

    op = "add" if args.add else "remove" if args.remove else "repair" if args.repair else None
    if args.target in ("train", "evaluate"):
        if op is not None:
            raise ConfigError(f"'zoolens edit {args.target}' takes no --add/--remove/--repair")
        if not (args.config or args.config_opt):
            raise ConfigError(f"'zoolens edit {args.target}' needs a CONFIG")
        args.config = args.config or args.config_opt
        pipe = _pipeline(args)
        with pipe.session(run_name=f"{pipe.cfg.name}-edit-{args.target}"):
            summary = pipe.edit_train() if args.target == "train" else pipe.edit_evaluate()
        print_edit_summary(args.target, summary, pipe.paths.report)
        return 0
    if op is None:
        raise ConfigError("say what to do to the model: --add B, --remove B or --repair")
    args.config = args.config_opt or args.config or DEFAULT_CONFIG
    pipe = _pipeline(args)
    with pipe.session(run_name=f"{pipe.cfg.name}-edit-{args.target}"):
        result = pipe.edit_apply(args.target, op, args.add or args.remove, args.method)
    print_edit_summary("apply", result, pipe.paths.report)
    return 0
