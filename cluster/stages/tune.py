"""A generic Ray Tune runner: ``zoolens tune SWEEP.yaml [KEY=VALUE ...] [--resume]``.

The YAML names a trainable from :data:`TRAINABLES` (others register theirs there), a search
space, an ASHA scheduler and where to store the sweep. YAML has no syntax for random
distributions, so a search-space entry is either a plain value (held fixed) or a one-key
mapping onto Tune's samplers::

    threshold: {uniform: [0.8, 0.99]}      # tune.uniform
    lr: {loguniform: [1.0e-4, 1.0e-2]}     # tune.loguniform
    cycle_steps: {choice: [16, 64, 256]}   # tune.choice
    depth: {randint: [1, 4]}               # tune.randint (upper bound exclusive)
    run_dir: runs/demo                     # fixed; *_dir / *_path values are made absolute

Every trial is an MLflow run nested under one parent run of the sweep. A sweep stopped part-way
(Ctrl-C) resumes with ``--resume``: finished trials are kept, unfinished ones continue from their
last checkpoint and log into the MLflow run they already had.

``storage_path`` is a directory (local, or shared by every node) or a ``s3://``, ``gs://`` or
``file://`` URI that Tune writes through pyarrow; see :class:`SweepStorage` for what goes where.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import mlflow
import pyarrow.fs as pafs
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.schedulers import ASHAScheduler

from interpreter.config import InterpreterConfig
from zoo.config import AntitrainConfig
from zoo.recipe import format_validation_error

from cluster.stages.antitraining import antitraining_trainable
from cluster.stages.interpreter_tune import interpreter_trainable, register_best
from cluster.tracking.runs import owner_tags, resolve_tracking_uri, setup_tracking
from zoo.errors import ConfigError
from zoo.recipe import load_recipe
from zoo.store import (
    check_uri_scheme,
    is_uri,
    open_location,
    put_fs_bytes,
    read_fs_bytes,
    resolve_location,
)

# name in the YAML -> function trainable (config dict -> reports via ray.tune.report)
TRAINABLES: dict[str, Callable[[dict[str, Any]], None]] = {
    "antitraining": antitraining_trainable,
    "interpreter": interpreter_trainable,
}


class AntitrainTrial(AntitrainConfig):
    """What one antitraining trial reads from its config (``antitraining_trainable``)."""

    seeds: list[int] = [0, 1, 2, 3]
    behaviors: list[str] = ["palindrome"]
    width: int = Field(64, ge=1)
    n_train: int = Field(1000, ge=8)
    epochs_per_report: int = Field(5, ge=1)


class InterpreterTrial(InterpreterConfig):
    """What one interpreter trial reads from its config (``interpreter_trainable``)."""

    run_dir: str
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = 0
    threads: int = Field(1, ge=1)


# name -> the config a trial of that trainable accepts: search spaces are checked against it before any trial starts
TRIAL_CONFIGS: dict[str, type[BaseModel]] = {"antitraining": AntitrainTrial, "interpreter": InterpreterTrial}
# name -> what to do once the sweep ends (result grid, metric, mode, tracking URI, parent run id)
AFTER_SWEEP: dict[str, Callable[[Any, str, str, str, str], dict[str, Any]]] = {"interpreter": register_best}
SAMPLERS: dict[str, Callable[..., Any]] = {"choice": tune.choice, "uniform": tune.uniform,
                                          "loguniform": tune.loguniform, "randint": tune.randint}
LOCAL_TUNE_DIR = "runs/tune"  # default storage_path; the local MLflow store of sweeps stored behind a URI


class SchedulerSpec(BaseModel):
    """ASHA over ``training_iteration`` (one iteration = one report of the trainable)."""

    model_config = ConfigDict(extra="forbid")
    max_t: int = Field(8, ge=1)
    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)


class TuneSpec(BaseModel):
    """A sweep file (see ``tune_configs/antitraining.yaml``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    trainable: str
    metric: str
    mode: Literal["min", "max"] = "max"
    num_samples: int = Field(8, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    storage_path: str = LOCAL_TUNE_DIR  # a directory, or a s3:// / gs:// / file:// URI
    experiment: str = "zoolens-tune"
    tracking_uri: str | None = None
    scheduler: SchedulerSpec = SchedulerSpec()
    search_space: dict[str, Any] = Field(default_factory=dict)


def load_tune_spec(path: str | Path, overrides: Sequence[str] = ()) -> TuneSpec:
    """Parse and validate a sweep YAML plus ``key.path=value`` overrides; any problem becomes one ConfigError line."""
    spec = load_recipe(TuneSpec, path, overrides)
    if spec.trainable not in TRAINABLES:
        raise ConfigError(f"unknown trainable '{spec.trainable}'; known: {', '.join(TRAINABLES)}")
    if is_uri(spec.storage_path):
        try:
            check_uri_scheme(spec.storage_path)
        except ValueError as e:
            raise ConfigError(f"bad sweep file {path}: storage_path: {e}") from None
    check_search_space(spec)  # the samplers and every value they can draw, now, not inside Ray
    return spec


def _candidates(key: str, value: Any) -> list[Any]:
    """The values a search-space entry can give a trial (a sampler's choices or bounds), checked for shape."""
    if not (isinstance(value, dict) and len(value) == 1):
        return [value]
    kind, args = next(iter(value.items()))
    where = f"search_space.{key}"
    if kind not in SAMPLERS:
        raise ConfigError(f"{where}: unknown sampler '{kind}' (known: {', '.join(SAMPLERS)})")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: choice needs a non-empty list, got {args!r}")
        return list(args)
    numeric = isinstance(args, list) and len(args) == 2 and all(
        isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if not numeric:
        raise ConfigError(f"{where}: {kind} needs [low, high], got {args!r}")
    lo, hi = args
    if not lo < hi:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: loguniform needs a positive low bound, got {lo}")
    if kind == "randint":
        if not (isinstance(lo, int) and isinstance(hi, int)):
            raise ConfigError(f"{where}: randint needs integer bounds, got [{lo}, {hi}]")
        return [lo, hi - 1]  # the upper bound is exclusive
    return [lo, hi]


def check_search_space(spec: TuneSpec) -> None:
    """Every key of the search space must be a setting of the trainable, and every value a sampler can draw valid.

    The trial config is validated with each key's first candidate, then with each other candidate in turn, so
    an unknown key, an empty choice, reversed bounds or an out-of-range value is one line before Ray starts.
    """
    model = TRIAL_CONFIGS.get(spec.trainable)
    candidates = {k: _candidates(k, v) for k, v in spec.search_space.items()}
    if model is None:
        return
    base = {k: v[0] for k, v in candidates.items()}
    trials = [base] + [{**base, k: c} for k, vs in candidates.items() for c in vs[1:]]
    for trial in trials:
        try:
            model.model_validate(trial)
        except ValidationError as e:
            raise ConfigError(f"search_space of {spec.trainable} trials: {format_validation_error(e)}") from None


def param_space(spec: TuneSpec) -> dict[str, Any]:
    """Map the YAML search space onto Tune samplers (one-key mappings) and fixed values (anything else).

    Fixed string values of keys ending in ``_dir`` or ``_path`` are made absolute here, in the
    driver: trials run in their own directories, where a relative path would point elsewhere
    (storage URIs are kept as they are).
    """
    space: dict[str, Any] = {}
    for key, value in spec.search_space.items():
        if isinstance(value, str) and key.endswith(("_dir", "_path")):
            space[key] = str(resolve_location(value))
        elif isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SAMPLERS:
            kind, args = next(iter(value.items()))
            if kind == "choice":
                space[key] = tune.choice(list(args))
            elif not (isinstance(args, list) and len(args) == 2):
                raise ConfigError(f"search_space.{key}: {kind} needs [low, high], got {args!r}")
            else:
                space[key] = SAMPLERS[kind](*args)
        else:
            space[key] = value
    return space


class SweepStorage:
    """Where a sweep keeps Tune's experiment directory and its MLflow parent-run id.

    ``storage_path`` is a directory (made absolute) or a ``s3://``, ``gs://`` or ``file://`` URI.
    Tune's experiment is ``LOCATION/NAME`` and the parent run's id ``LOCATION/NAME.mlflow_parent_run``
    in both cases (through pyarrow.fs for a URI, so any machine that reads the bucket can resume).
    The default MLflow store (``mlflow.db`` and ``mlartifacts/``) lives in the directory, or for a
    URI in the local ``runs/tune`` (sqlite cannot live in object storage; on a cluster pass an
    MLflow server with ``--tracking-uri``).
    """

    def __init__(self, storage_path: str):
        loc = open_location(storage_path, error=ConfigError)
        self.location, self.fs, self._base = loc.uri, loc.fs, loc.path
        self.local_dir = loc.local or Path(LOCAL_TUNE_DIR).resolve()

    def experiment(self, name: str) -> str:
        """Tune's experiment directory (a path or a URI), what ``Tuner.restore`` reads."""
        return f"{self.location}/{name}"

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(f"{self._base}/{name}").type != pafs.FileType.NotFound

    def read_parent_run(self, name: str) -> str | None:
        """The sweep's parent MLflow run id, or None if it was never written."""
        try:
            return read_fs_bytes(self.fs, f"{self._base}/{name}.mlflow_parent_run").decode().strip()
        except FileNotFoundError:
            return None

    def write_parent_run(self, name: str, run_id: str) -> None:
        put_fs_bytes(self.fs, f"{self._base}/{name}.mlflow_parent_run", run_id.encode())


class ResumableMLflowLoggerCallback(MLflowLoggerCallback):
    """MLflowLoggerCallback that, after a restore, logs a trial into the MLflow run it already has.

    The stock callback keeps its trial -> run map in memory only, so a resumed trial would open a
    second run; here a trial first looks for a run of this sweep tagged with its name. Every trial run
    carries the owner tags of the driver logging it now (a restored callback holds the first driver's),
    so runs a killed sweep left RUNNING end FAILED on the next start, like the pipeline's.
    """

    def log_trial_start(self, trial: Any) -> None:
        if trial not in self._trial_runs:
            client = MlflowClient(self.tracking_uri)
            parent = (self.tags or {}).get("mlflow.parentRunId", "")
            found = client.search_runs([self.mlflow_util.experiment_id],
                                       filter_string=f"tags.trial_name = '{trial}' and tags.`mlflow.parentRunId` = '{parent}'")
            if found:
                self._trial_runs[trial] = found[0].info.run_id
                client.update_run(found[0].info.run_id, status="RUNNING")
        super().log_trial_start(trial)
        client = MlflowClient(self.tracking_uri)
        for key, value in owner_tags().items():
            client.set_tag(self._trial_runs[trial], key, value)


def run_tune(yaml_path: str | Path, resume: bool = False, tracking_uri: str | None = None,
             overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or with ``resume`` continue) the sweep in ``yaml_path`` (with ``overrides``); returns the best trial and where things are.

    Paths and the tracking URI are made absolute before any trial starts (Tune runs each trial in
    its own directory). The parent MLflow run's id is kept beside the sweep (see
    :class:`SweepStorage`) so a resume nests the remaining trials under the same parent.
    """
    import ray

    from cluster.config import RayConfig
    from cluster.runtime import init_ray

    spec = load_tune_spec(yaml_path, overrides)
    storage = SweepStorage(spec.storage_path)
    exp_dir = storage.experiment(spec.name)
    if resume and not (storage.read_parent_run(spec.name) and tune.Tuner.can_restore(exp_dir)):
        raise ConfigError(f"nothing to resume at {exp_dir}; run without --resume first")
    if not resume and storage.exists(spec.name):
        raise ConfigError(f"sweep {exp_dir} already exists; pass --resume to continue it or remove it")
    uri = resolve_tracking_uri(tracking_uri, spec.tracking_uri, storage.local_dir)
    exp_id = setup_tracking(uri, spec.experiment, storage.local_dir / "mlartifacts")
    if not ray.is_initialized():
        init_ray(RayConfig())
    trainable = tune.with_resources(TRAINABLES[spec.trainable], {"cpu": spec.cpus_per_trial})

    if resume:
        parent = storage.read_parent_run(spec.name)
        if not (parent and tune.Tuner.can_restore(exp_dir)):
            raise ConfigError(f"nothing to resume at {exp_dir}; run without --resume first")
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_unfinished=True)
    else:
        if storage.exists(spec.name):
            raise ConfigError(f"sweep {exp_dir} already exists; pass --resume to continue it or remove it")
        with mlflow.start_run(experiment_id=exp_id, run_name=spec.name, tags={"zoolens.stage": "tune"}) as run:
            mlflow.log_dict(spec.model_dump(mode="json"), "sweep.json")
            mlflow.log_params({"trainable": spec.trainable, "num_samples": spec.num_samples, "metric": spec.metric})
            parent = run.info.run_id
        storage.write_parent_run(spec.name, parent)
        s = spec.scheduler
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                max_concurrent_trials=spec.max_concurrent_trials,
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=s.max_t, grace_period=s.grace_period,
                                        reduction_factor=s.reduction_factor)),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=storage.location, verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
                callbacks=[ResumableMLflowLoggerCallback(uri, experiment_name=spec.experiment,
                                                         tags={"mlflow.parentRunId": parent})]),
        )
    results = tuner.fit()
    summary: dict[str, Any] = {"experiment_path": exp_dir, "tracking_uri": uri, "parent_run_id": parent,
                               "n_trials": len(results), "errors": len(results.errors)}
    done = [r for r in results if r.metrics and spec.metric in r.metrics]
    if done:
        best = results.get_best_result(spec.metric, spec.mode, scope="last")
        summary["best_config"] = {k: v for k, v in best.config.items() if k in spec.search_space}
        summary["best_metrics"] = {k: v for k, v in best.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        client = MlflowClient(uri)
        for k, v in summary["best_metrics"].items():
            client.log_metric(parent, f"best.{k}", float(v))
        client.set_tag(parent, "best_config", str(summary["best_config"])[:5000])
        if spec.trainable in AFTER_SWEEP:
            summary["after_sweep"] = AFTER_SWEEP[spec.trainable](results, spec.metric, spec.mode, uri, parent)
    return summary
