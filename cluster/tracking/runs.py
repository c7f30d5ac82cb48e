"""MLflow: where runs go, and the small helpers every stage uses to record itself.

Locally the store is a sqlite file with an absolute path, created by the driver
before any worker starts (concurrent first opens race in its migrations). On a
cluster, point ``--tracking-uri`` / ``MLFLOW_TRACKING_URI`` at an ``mlflow server``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sqlite3
import tempfile
import urllib.error
import urllib.request
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


HEALTH_TIMEOUT_S = 5.0  # a tracking server that does not answer its /health in this long is reported, not waited on
OWNER_TAGS = ("zoolens.host", "zoolens.pid")  # which process runs a run: a RUNNING run whose process is gone is stale


def check_tracking_uri(uri: str) -> None:
    """Fail within seconds, in one line, when an HTTP tracking server does not answer (MLflow itself retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S) as r:
            if r.status == 200:
                return
            problem = f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        problem = f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        problem = str(getattr(e, "reason", e))
    raise TrackingError(f"MLflow tracking server {uri} does not answer ({problem}); start it (zoolens mlflow serve) "
                        "or pass another --tracking-uri")


def make_run_dir(path: Path) -> None:
    """Create a run directory, or say in one line why it cannot be (a file in the way, no permission)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise TrackingError(f"cannot use {path} as a run directory: a file of that name (or above it) is in the way") from None
    except (NotADirectoryError, PermissionError, OSError) as e:
        raise TrackingError(f"cannot create run directory {path}: {e.strerror or e}") from None


def create_sqlite_store(uri: str, artifact_root: Path) -> None:
    """Create a new sqlite store whole or not at all: migrated in a temporary file, then renamed into place.

    MLflow's first open runs ~50 schema migrations; a driver killed among them left a file every later
    open refused (``table _alembic_tmp_experiments already exists``).
    """
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # sqlite creates it; an empty file of another name is all mkstemp was for
    for name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..." is no news
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore(f"sqlite:///{tmp}", artifact_root.resolve().as_uri())
        store.engine.dispose()
        with contextlib.closing(sqlite3.connect(tmp)) as db:  # registry tables come with the same migrations
            db.execute("PRAGMA user_version")
        if not path.exists():
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


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
    check_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # inherited by Ray workers started from here
    mlflow.set_tracking_uri(uri)
    try:
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            create_sqlite_store(uri, artifact_root)
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            location = None if uri.startswith("http") else artifact_root.resolve().as_uri()
            exp_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
    except Exception as e:  # noqa: BLE001 - any store failure becomes one clear line
        raise TrackingError(f"cannot open MLflow tracking store {uri}: {str(e).splitlines()[0]}") from None
    mlflow.set_experiment(experiment_id=exp_id)
    end_stale_runs(exp_id)
    return exp_id


def owner_tags() -> dict[str, str]:
    """Tags that name the process running a run (see :func:`end_stale_runs`)."""
    return {"zoolens.host": socket.gethostname(), "zoolens.pid": str(os.getpid())}


def end_stale_runs(experiment_id: str) -> list[str]:
    """Mark FAILED the RUNNING runs of this experiment whose driver (on this host) is gone, and their children.

    A killed driver cannot end its runs; the next start does. Runs of live processes, of other hosts,
    or without the owner tags are left alone.
    """
    import psutil

    client = MlflowClient()
    try:
        running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    except Exception:  # noqa: BLE001 - tidying is best effort; the run that starts now must not fail for it
        return []
    host = socket.gethostname()
    stale = {r.info.run_id for r in running
             if r.data.tags.get("zoolens.host") == host and r.data.tags.get("zoolens.pid", "").isdigit()
             and not psutil.pid_exists(int(r.data.tags["zoolens.pid"]))}
    stale |= {r.info.run_id for r in running if r.data.tags.get("mlflow.parentRunId") in stale}
    for run_id in stale:
        client.set_terminated(run_id, status="FAILED")
        client.set_tag(run_id, "zoolens.ended_by", "the next start (its driver was gone)")
    return sorted(stale)


@contextlib.contextmanager
def start_run(**kwargs: Any) -> Iterator[mlflow.ActiveRun]:
    """``mlflow.start_run`` with the owner tags, ending the run KILLED when the process is interrupted (Ctrl-C, SIGTERM)."""
    tags = {**owner_tags(), **(kwargs.pop("tags", None) or {})}
    with mlflow.start_run(tags=tags, **kwargs) as run:
        try:
            yield run
        except KeyboardInterrupt:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run.info.run_id:
                mlflow.end_run("KILLED")
            raise


@contextlib.contextmanager
def stage_run(name: str, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """A child run of the active pipeline run (or a top-level run when a stage runs alone)."""
    nested = mlflow.active_run() is not None
    with start_run(run_name=name, nested=nested, tags={"zoolens.stage": name, **(tags or {})}) as run:
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
    written by zoolens, never have missing values, and the hint only cluttered every run's output;
    so are its notes on how it read the source path and on its own use of pandas.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Integer columns in Python cannot represent missing values.*")
        # a local path source matches two of MLflow's source types (same class twice): it picks one, which is right
        warnings.filterwarnings("ignore", message=".*dataset source can be interpreted in multiple ways.*")
        warnings.filterwarnings("ignore", message=".*all arguments of all will be keyword-only.*")  # MLflow's digest vs pandas 4
        dataset = mlflow.data.from_pandas(df, source=source, name=name)
        mlflow.log_input(dataset, context=context)


def log_epoch_metrics(run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log metrics to a run from any process (workers pass the run id they were given)."""
    client = MlflowClient()
    for k, v in metrics.items():
        client.log_metric(run_id, k, float(v), step=step)


def log_headline(table: list[dict[str, Any]]) -> None:
    """The interpreter's held-out numbers as metrics of the active run, and the whole results table as its note.

    The pipeline's parent run is what the MLflow runs list shows first; without these it showed no numbers.
    """
    ours = next((row for row in table if row.get("method") == "interpreter"), None)
    if ours is not None:
        mlflow.log_metrics(as_metrics({f"heldout.{k}": v for k, v in ours.items() if k != "method"}))
    mlflow.set_tag("mlflow.note.content", markdown_table(table))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of a results table as a Markdown table (numbers to 3 decimals, blanks for missing values)."""
    if not rows:
        return ""
    cols = list(rows[0])

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return ""
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
