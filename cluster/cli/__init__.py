"""``zoolens``: the command line. Every user-facing failure is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cluster.cli import analyze as analyze_cli, antitrain as antitraining_cli, edit as edit_cli, foreign as foreign_cli
from cluster.cli import read as read_cli, tune as tune_cli

USAGE_ERROR = 2
ZOO_HELP = "zoo directory, or a s3:// / gs:// / file:// URI (default: RUN_DIR/zoo)"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line naming the problem (exit 2), like every other bad input."""

    def error(self, message: str) -> Any:
        self.exit(USAGE_ERROR, f"zoolens: error: {message} (see '{self.prog} --help')\n")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="pipeline YAML (e.g. configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any config field, e.g. zoo.n_models=400")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite in the run dir)")
    p.add_argument("--output-dir", help="run directory (overrides output_dir in the config)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_stage(group: Any, name: str, stage: str, text: str) -> None:
    """A command that runs one pipeline stage: CONFIG, overrides, the common flags and ``--zoo``."""
    p = group.add_parser(name, help=text)
    _add_common(p)
    p.add_argument("--zoo", help=ZOO_HELP)
    p.set_defaults(handler=lambda a: _stage(a, stage))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="zoolens", description="Read, explain and edit neural networks through their behavior.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the main job: zoo, signatures, interpreter, evaluation")
    _add_common(run)
    run.set_defaults(handler=cmd_run)

    zoo = sub.add_parser("zoo", help="build or describe a zoo of subject models").add_subparsers(dest="zoo_cmd", required=True)
    _add_stage(zoo, "build", "zoo", "train the zoo described by CONFIG (reruns skip finished cohorts)")
    show = zoo.add_parser("show", help="describe a zoo or a foreign zoo: counts by family and behavior, accuracy, size")
    show.add_argument("zoo", help="zoo directory, a s3:// / gs:// / file:// URI, or a foreign zoo's directory")
    show.set_defaults(handler=cmd_zoo_show)
    foreign_cli.add_commands(zoo)

    sig = sub.add_parser("signatures", help="activation signatures").add_subparsers(dest="sig_cmd", required=True)
    _add_stage(sig, "extract", "signatures", "stream the zoo through the probe set with Ray Data (a foreign zoo given "
                                             "as --zoo: its models read through the adapter, one Ray task per chunk)")

    interp = sub.add_parser("interpreter", help="train or evaluate the interpreter").add_subparsers(dest="int_cmd", required=True)
    _add_stage(interp, "train", "train", "train on a split by lineage")
    _add_stage(interp, "evaluate", "evaluate", "score held-out models beside baselines and register")

    mlf = sub.add_parser("mlflow", help="MLflow tracking server for cluster runs").add_subparsers(dest="mlflow_cmd", required=True)
    serve = mlf.add_parser("serve", help="run a local MLflow server (sqlite + artifacts under --root); workers log over HTTP")
    serve.add_argument("--port", type=int, default=5000, help="port to listen on (default: 5000)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; 0.0.0.0 to reach it from other nodes)")
    serve.add_argument("--root", default="runs/mlflow-server", help="directory for mlflow.db and artifacts/ (default: runs/mlflow-server)")
    serve.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (default: 2)")
    serve.set_defaults(handler=cmd_mlflow_serve)

    edit_cli.add_commands(sub)
    read_cli.add_commands(sub)
    antitraining_cli.add_commands(sub)
    tune_cli.add_commands(sub)
    analyze_cli.add_commands(sub)
    return parser


def _pipeline(args: argparse.Namespace):
    from cluster.pipeline import Pipeline

    return Pipeline.from_args(args)


def _stage(args: argparse.Namespace, stage: str) -> int:
    from cluster.tracking.report import print_summary

    pipe = _pipeline(args)
    pipe.preflight(stage)
    with pipe.session(run_name=f"{pipe.cfg.name}-{stage}"):
        getattr(pipe, stage)()
    if stage == "evaluate":
        print_summary(pipe.paths.report, pipe.tracking_uri)
    else:
        print(f"report: {pipe.paths.report}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from cluster.tracking.report import print_summary

    pipe = _pipeline(args)
    pipe.preflight("zoo")
    with pipe.session(run_name=pipe.cfg.name):
        report = pipe.run_all()
    print_summary(report, pipe.tracking_uri)
    return 0


def cmd_zoo_show(args: argparse.Namespace) -> int:
    from cluster.tracking.report import show_zoo

    show_zoo(args.zoo)
    return 0


def cmd_mlflow_serve(args: argparse.Namespace) -> int:
    from cluster.tracking.server import cmd_serve

    return cmd_serve(args)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    previous = _terminate_as_interrupt()
    try:
        return handler(args)
    except KeyboardInterrupt:
        _end_active_runs("KILLED")
        print("zoolens: interrupted; finished work is kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - translated into one line below, or re-raised
        message = user_error_message(e)
        if message is None:
            raise
        print(f"zoolens: error: {message}", file=sys.stderr)
        return USAGE_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt() -> Any:
    """SIGTERM (``kill``, a scheduler's stop) unwinds like Ctrl-C, so the MLflow runs end KILLED, not RUNNING.

    Returns the previous handler, or None where handlers cannot be set (not the main thread).
    """
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:
        return None


def _end_active_runs(status: str) -> None:
    """End every MLflow run this process still has open (innermost first) with ``status``."""
    mlflow = sys.modules.get("mlflow")
    while mlflow is not None and mlflow.active_run() is not None:
        mlflow.end_run(status)


def user_error_message(e: BaseException) -> str | None:
    """One-line message for errors a user can fix, looking through Ray's task-error wrapper."""
    from zoo.errors import ZoolensError

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        cause = getattr(e, "cause", None)  # ray.exceptions.RayTaskError keeps the original here
        if isinstance(e, ZoolensError) and not isinstance(cause, BaseException):
            return str(e).splitlines()[0] if str(e) else type(e).__name__
        e = cause if isinstance(cause, BaseException) else e.__cause__
    return None


if __name__ == "__main__":
    sys.exit(main())
