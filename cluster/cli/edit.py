"""Commands ``zoolens edit train|evaluate CONFIG`` and ``zoolens edit MODEL --add B | --remove B | --repair |
--remove-backdoor``; with ``--zoo FOREIGN`` (a zoo of ``zoolens zoo foreign``), ``--add B | --remove B`` of one of its
models by the guided edit.

Both take ``key.path=value`` overrides after the target (and CONFIG), like every pipeline command. Training
and evaluating the editor run as Ray tasks; one edit of one model runs in this process and starts no Ray.
"""

from __future__ import annotations

import argparse
from typing import Any

from zoo.errors import ConfigError

DEFAULT_CONFIG = "configs/demo.yaml"


def add_commands(subparsers: Any) -> None:
    """Add ``edit`` to the ``zoolens`` subparsers."""
    edit = subparsers.add_parser(
        "edit", help="edit behaviors in working weights, or train/evaluate the editor",
        description="zoolens edit train CONFIG [KEY=VALUE ...] | zoolens edit evaluate CONFIG [KEY=VALUE ...] | "
                    "zoolens edit MODEL [CONFIG] [KEY=VALUE ...] (--add B | --remove B | --repair) [--config CONFIG]")
    edit.add_argument("target", help="'train', 'evaluate', or the id of a model in the run's zoo")
    edit.add_argument("rest", nargs="*", metavar="CONFIG | KEY=VALUE",
                      help=f"pipeline YAML (default for a model edit: {DEFAULT_CONFIG}), then overrides of any config "
                           "field, e.g. edit.guided_steps=500 (they follow the target, before the options)")
    edit.add_argument("--config", dest="config_opt", metavar="CONFIG", help="pipeline YAML of the run the model belongs to")
    what = edit.add_mutually_exclusive_group()
    what.add_argument("--add", metavar="B", help="make the model also flag behavior B")
    what.add_argument("--remove", metavar="B", help="make the model stop flagging behavior B")
    what.add_argument("--repair", action="store_true", help="restore the behavior whose labels were corrupted")
    what.add_argument("--remove-backdoor", action="store_true",
                      help="name the model's backdoor trigger by search and fine-tune it away (interpreter/editing/backdoor.py)")
    edit.add_argument("--method", choices=("guided", "decoder", "onepass", "onepass_refine"), default="guided",
                      help="guided: decode by optimization against the forward pass (default); decoder: one decoder "
                           "pass; onepass: one gradient and one pass of the amortized editor; onepass_refine: that, "
                           "then edit.onepass.refine_steps steps of the guided objective")
    edit.add_argument("--force", action="store_true",
                      help="edit even when it would do nothing (add a behavior the model has, remove one it lacks, "
                           "repair a model with no corrupted labels)")
    edit.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite in the run dir)")
    edit.add_argument("--output-dir", help="run directory (overrides output_dir in the config)")
    edit.add_argument("--no-progress", action="store_true", help="hide progress bars")
    edit.add_argument("--zoo", help="zoo directory or URI (default: RUN_DIR/zoo), or a foreign zoo ('zoolens zoo foreign'): "
                                    "its model is edited by the guided edit into RUN_DIR/edits/")
    edit.set_defaults(handler=cmd_edit)


def split_rest(rest: list[str], config_opt: str | None) -> tuple[str | None, list[str]]:
    """(CONFIG, overrides) from the positionals after the target: every ``key=value`` is an override."""
    overrides = [r for r in rest if "=" in r]
    configs = [r for r in rest if "=" not in r] + ([config_opt] if config_opt else [])
    if len(configs) > 1:
        raise ConfigError(f"one CONFIG only, got {', '.join(configs)}")
    return (configs[0] if configs else None), overrides


def cmd_edit(args: argparse.Namespace) -> int:
    from cluster.pipeline import Pipeline
    from cluster.tracking.report import print_edit_summary, print_foreign_edit
    from zoo.foreign.store import is_foreign_zoo

    op = "add" if args.add else "remove" if args.remove else "repair" if args.repair else None
    config, args.overrides = split_rest(args.rest, args.config_opt)
    foreign = bool(args.zoo) and is_foreign_zoo(args.zoo)  # its models: the guided edit into RUN_DIR/edits/
    if foreign:
        _refuse_for_foreign(args)
    if args.target in ("train", "evaluate"):
        if op is not None:
            raise ConfigError(f"'zoolens edit {args.target}' takes no --add/--remove/--repair")
        if config is None:
            raise ConfigError(f"'zoolens edit {args.target}' needs a CONFIG")
        args.config = config
        pipe = Pipeline.from_args(args)
        with pipe.session(run_name=f"{pipe.cfg.name}-edit-{args.target}"):
            summary = pipe.edit_train() if args.target == "train" else pipe.edit_evaluate()
        print_edit_summary(args.target, summary, pipe.paths.report)
        return 0
    if args.remove_backdoor:
        return _remove_backdoor(args, config)
    if op is None:
        raise ConfigError("say what to do to the model: --add B, --remove B, --repair or --remove-backdoor")
    args.config = config or DEFAULT_CONFIG
    pipe = Pipeline.from_args(args)
    pipe.check_edit(args.target, op, args.add or args.remove, force=args.force)
    with pipe.session(run_name=f"{pipe.cfg.name}-edit-{args.target}", ray=False):  # one model: in this process
        if foreign:
            result = pipe.edit_foreign(args.target, op, args.add or args.remove)
        else:
            result = pipe.edit_apply(args.target, op, args.add or args.remove, args.method)
    if foreign:
        print_foreign_edit(result)
    else:
        print_edit_summary("apply", result, pipe.paths.report)
    return 0


def _refuse_for_foreign(args: argparse.Namespace) -> None:
    """One line for what a foreign model cannot have: the editor's stages, repair, backdoor removal, the decoder."""
    if args.target in ("train", "evaluate"):
        raise ConfigError(f"'zoolens edit {args.target}' trains or scores the editor on a run's own zoo, not a foreign zoo")
    if args.repair or args.remove_backdoor or args.method != "guided":
        what = "--repair" if args.repair else "--remove-backdoor" if args.remove_backdoor else f"--method {args.method}"
        raise ConfigError(f"{what} is not available for foreign models (they have no corrupted-label or backdoor twin "
                          "and no trained editor); use --add B or --remove B")


def _remove_backdoor(args: argparse.Namespace, config: str | None) -> int:
    """``zoolens edit MODEL --remove-backdoor``: in this process, into the run's ``edited`` store, one MLflow run."""
    import json

    import mlflow

    from cluster.pipeline import Pipeline
    from interpreter.editing.backdoor import remove_zoo_backdoor, zoo_model_rows
    from zoo.store import ZooStore

    args.config = config or DEFAULT_CONFIG
    pipe = Pipeline.from_args(args)
    zoo_model_rows(ZooStore(pipe.zoo_dir), args.target)  # an unknown model is one line, before anything is written
    with pipe.session(run_name=f"{pipe.cfg.name}-remove-backdoor-{args.target}", ray=False):
        result = remove_zoo_backdoor(pipe.zoo_dir, args.target, ZooStore(pipe.paths.edited),
                                     max_gap=pipe.cfg.zoo.trojans.max_gap)
        mlflow.log_dict(result, "remove_backdoor.json")
    print(json.dumps({k: result[k] for k in ("edited_id", "named_trigger", "named_exactly", "max_behavior_shift",
                                             "trigger_excess", "removed", "neutralized")}))
    print(f"trigger rate over the input space {result['before']['trigger_rate']:.3f} -> {result['after']['trigger_rate']:.3f}"
          f" (the model's other negatives: {result['after']['negatives_rate']:.3f})")
    return 0
