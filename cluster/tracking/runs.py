"""MLflow: where runs go, and the small helpers every stage uses to record itself.

Locally the store is a sqlite file with an absolute path, created by the driver
before any worker starts (concurrent first opens race in its migrations). On a
cluster, point ``--tracking-uri`` / ``MLFLOW_TRACKING_URI`` at an ``mlflow server``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from zoo.errors import ZoolensError


class TrackingError(ZoolensError):
    """The MLflow store cannot be reached or set up."""


def resolve_tracking_uri(explicit: str | None, configured: str | None, run_root: Path) -> str:
    """Choose the tracking URI: flag > MLFLOW_TRACKING_URI > config > ``sqlite:///<run_root>/mlflow.db``."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or configured
    if not uri:
        return f"sqlite:///{(run_root / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # relative sqlite paths would land in whatever directory a worker or Tune trial runs in
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def setup_tracking(uri: str, experiment: str, artifact_root: Path) -> str:
    """Create the store and experiment once, in the driver; returns the experiment id."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # inherited by Ray workers started from here
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            location = None if uri.startswith("http") else artifact_root.resolve().as_uri()
            exp_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
    except Exception as e:  # noqa: BLE001 - any store failure becomes one clear line
        raise TrackingError(f"cannot open MLflow tracking store {uri}: {str(e).splitlines()[0]}") from None
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@contextlib.contextmanager
def stage_run(name: str, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """A child run of the active pipeline run (or a top-level run when a stage runs alone)."""
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name=name, nested=nested, tags={"zoolens.stage": name, **(tags or {})}) as run:
        if params:
            mlflow.log_params(as_params(params))
        yield run


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``a.b.c`` keys with the leaf values as they are (MLflow params and metrics are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def as_params(d: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params from a nested config: every leaf a string (lists as JSON), at most 500 characters."""
    return {k: (json.dumps(v) if isinstance(v, (list, tuple)) else str(v))[:500] for k, v in flatten(d).items()}


def as_metrics(d: Mapping[str, Any]) -> dict[str, float]:
    """MLflow metrics from a nested summary: its finite numeric leaves (booleans as 0/1)."""
    numbers = {k: float(v) for k, v in flatten(d).items() if isinstance(v, (int, float, np.number))}
    return {k: v for k, v in numbers.items() if math.isfinite(v)}


def log_dataframe_input(df: pd.DataFrame, source: str, name: str, context: str) -> None:
    """Record a table (zoo manifest, signatures) as an MLflow dataset input of the active run.

    MLflow's hint that integer columns cannot hold missing values is silenced: these tables are
    written by zoolens, never have missing values, and the hint only cluttered every run's output.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Integer columns in Python cannot represent missing values.*")
        dataset = mlflow.data.from_pandas(df, source=source, name=name)
        mlflow.log_input(dataset, context=context)


def log_epoch_metrics(run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log metrics to a run from any process (workers pass the run id they were given)."""
    client = MlflowClient()
    for k, v in metrics.items():
        client.log_metric(run_id, k, float(v), step=step)
