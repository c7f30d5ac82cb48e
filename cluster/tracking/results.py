"""Running an analysis or experiment as one MLflow run and recording the :class:`~zoo.experiments.result.Result` it returns.

The files go under the command's run directory (``runs/...``); MLflow gets the recipe as params,
the summary as metrics, per-step metrics as histories, the table and the files as artifacts.
``publish`` copies the files into ``docs/results/`` as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from pydantic import BaseModel

from zoo.experiments.result import Result, publish, write_result

from cluster.tracking.runs import as_metrics, as_params, resolve_tracking_uri, setup_tracking, start_run

R = TypeVar("R", bound=BaseModel)


def start_tracking(tracking_uri: str | None, experiment: str, root: Path) -> None:
    """Point MLflow at ``tracking_uri`` (default: a sqlite store under ``root``) and the experiment.

    A new experiment keeps its artifacts beside a sqlite store (``mlartifacts/``), else under ``root``.
    """
    uri = resolve_tracking_uri(tracking_uri, None, root)
    store_dir = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else root
    setup_tracking(uri, experiment, store_dir / "mlartifacts")


def record(result: Result, run_dir: str | Path, publish_to: str | Path | None = None) -> dict[str, Any]:
    """Write the result under ``run_dir``, log it to the active MLflow run (if any), copy it to ``publish_to``."""
    paths = write_result(result, run_dir)
    if mlflow.active_run() is not None:
        for step, values in result.steps:
            mlflow.log_metrics(as_metrics(values), step=step)
        mlflow.log_metrics(as_metrics(result.summary))
        mlflow.log_table(result.table, f"{result.name}_table.json")
        for p in paths:
            mlflow.log_artifact(str(p), artifact_path="results")
    out = {"name": result.name, "summary": result.summary, "table": result.table.to_dict(orient="records"),
           "paths": [str(p) for p in paths]}
    if publish_to is not None:
        out["published"] = [str(p) for p in publish(paths, publish_to)]
    return out


def run_recorded(fn: Callable[[R], Result], cfg: R, run_name: str, stage: str, run_dir: str | Path,
                 publish_to: str | Path | None = None) -> dict[str, Any]:
    """``fn(cfg)`` inside one MLflow run (tracking already set up), recorded as above; adds ``seconds``."""
    t0 = time.perf_counter()
    with start_run(run_name=run_name, tags={"zoolens.stage": stage}):
        mlflow.log_params(as_params(cfg.model_dump(mode="json")))
        result = fn(cfg)
        seconds = time.perf_counter() - t0
        mlflow.log_metric("seconds", seconds)
        return {**record(result, run_dir, publish_to), "seconds": seconds}
