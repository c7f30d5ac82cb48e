"""``read``: one model of any origin read by a trained interpreter, for the command line and for notebooks.

>>> from zoolens import read                     # the same function as cluster.tracking.reader.read
>>> r = read("m0000007", "runs/demo")           # a model of the run's zoo
>>> r = read("my_model.py:Net", "runs/demo", weights="net.safetensors", args="args.yaml")
>>> r = read("hooked_transformer:tl.yaml", "models:/zoolens-interpreter@champion", weights="tl.safetensors")
>>> r.flagged, r.behaviors, r.accuracy, r.carriers

The interpreter comes from a run directory (``RUN_DIR/interpreter`` read through ``RUN_DIR/signatures``' probe
set), an interpreter directory inside a run, or the MLflow registry (``models:/NAME@ALIAS`` or ``models:/NAME/V``;
its probe set is rebuilt from the pipeline config logged with it and checked against the hash it was trained on).
With ``out_dir`` it writes ``read.json`` and ``carrier_map.png``; with a tracking URI (argument or
``MLFLOW_TRACKING_URI``) it logs both to an MLflow run in the experiment ``zoolens-read``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interpreter.model import META_FILE, LoadedInterpreter, load_interpreter
from interpreter.reading import Reading, read_model
from zoo.adapters.sources import from_class_file, from_hooked_transformer, from_zoo
from zoo.adapters.subject import AdapterError, Subject
from zoo.errors import ZoolensError
from zoo.probes import ProbeSet, make_probe_set
from zoo.store import atomic_write_json

TRANSFORMER_PREFIXES = ("hooked_transformer:", "tl:")
READ_EXPERIMENT = "zoolens-read"


class ReadError(ZoolensError):
    """An interpreter or model source that cannot be read."""


def _probe_set_from_signatures(sig_dir: Path) -> ProbeSet:
    from cluster.stages.signatures import read_probe_set

    return read_probe_set(sig_dir)


def _local_interpreter(path: Path) -> tuple[LoadedInterpreter, ProbeSet, Path | None]:
    """(interpreter, probe set, run directory or None) from a run directory or an interpreter directory in a run."""
    if (path / "interpreter" / META_FILE).is_file():
        run_dir, interp_dir = path, path / "interpreter"
    elif (path / META_FILE).is_file():
        run_dir, interp_dir = path.parent, path
    else:
        raise ReadError(f"no interpreter at {path}: expected a run directory with interpreter/{META_FILE}, "
                        f"an interpreter directory, or models:/NAME@ALIAS")
    sig_dir = run_dir / "signatures"
    probes = _probe_set_from_signatures(sig_dir) if sig_dir.is_dir() else _probe_set_from_provenance(interp_dir, None)
    return _load(interp_dir), probes, run_dir


def _load(interp_dir: Path) -> LoadedInterpreter:
    try:
        return load_interpreter(interp_dir)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise ReadError(f"cannot load the interpreter in {interp_dir}: {str(e).splitlines()[0]}") from None


def _probe_set_from_provenance(interp_dir: Path, config: Mapping[str, Any] | None) -> ProbeSet:
    """The probe set rebuilt from a pipeline config (zoo behaviors/vocab/length, signatures.probes), checked against
    the hash in the interpreter's provenance.json."""
    prov_path = interp_dir / "provenance.json"
    if config is None:
        raise ReadError(f"cannot tell which probe set the interpreter in {interp_dir} reads: no signatures beside it")
    zoo_cfg, probe_cfg = config.get("zoo", {}), config.get("signatures", {}).get("probes", {})
    try:
        probes = make_probe_set(zoo_cfg["behaviors"], zoo_cfg["vocab"], zoo_cfg["length"], **probe_cfg)
    except (KeyError, TypeError) as e:
        raise ReadError(f"the pipeline config logged with the interpreter lacks {e}") from None
    if prov_path.is_file():
        expected = json.loads(prov_path.read_text()).get("probe_sha256")
        if expected and expected != probes.sha256:
            raise ReadError("the probe set rebuilt from the logged config does not match the interpreter's probe hash")
    return probes


def _registry_interpreter(uri: str, tracking_uri: str | None) -> tuple[LoadedInterpreter, ProbeSet, Path | None]:
    """Download a registered interpreter (``models:/...``) and rebuild its probe set from its pipeline's config."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        name_ref = uri.removeprefix("models:/")
        if "@" in name_ref:
            name, alias = name_ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = name_ref.split("/", 1)
            version = client.get_model_version(name, number)
        run = client.get_run(version.run_id)
        parent = run.data.tags.get("mlflow.parentRunId")
        config_path = mlflow.artifacts.download_artifacts(run_id=parent or run.info.run_id, artifact_path="config.json")
        config = json.loads(Path(config_path).read_text())
    except (MlflowException, OSError, ValueError) as e:
        raise ReadError(f"cannot load {uri}: {str(e).splitlines()[0]}") from None
    interp_dir = next((p.parent for p in local.rglob(META_FILE)), None)
    if interp_dir is None:
        raise ReadError(f"{uri} holds no {META_FILE}")
    return _load(interp_dir), _probe_set_from_provenance(interp_dir, config), None


def load_reader(interpreter: str | Path, tracking_uri: str | None = None) -> tuple[LoadedInterpreter, ProbeSet, Path | None]:
    """(interpreter, its probe set, the run directory when local) from a path or a ``models:/`` URI."""
    if str(interpreter).startswith("models:/"):
        return _registry_interpreter(str(interpreter), tracking_uri)
    path = Path(interpreter).expanduser()
    if not path.exists():
        raise ReadError(f"interpreter not found: {path}")
    return _local_interpreter(path.resolve())


def load_subject(model: str, weights: str | Path | None = None, args: str | Path | Mapping[str, Any] | None = None,
                 zoo: str | Path | None = None, hooks: Sequence[str] | None = None) -> Subject:
    """The model to read: ``hooked_transformer:CONFIG`` or ``path.py:Class`` (both with safetensors ``weights``),
    else a model id of ``zoo`` (a zoo, or a foreign zoo made by ``zoolens zoo foreign``)."""
    for prefix in TRANSFORMER_PREFIXES:
        if model.startswith(prefix):
            if weights is None:
                raise AdapterError("a HookedTransformer needs its weights: --weights FILE.safetensors")
            return from_hooked_transformer(model.removeprefix(prefix), weights, hook_modules=hooks)
    if ":" in model and model.split(":", 1)[0].endswith(".py"):
        if weights is None:
            raise AdapterError(f"{model} needs its weights: --weights FILE.safetensors")
        return from_class_file(model, weights, args, hook_modules=hooks)
    if weights is not None:
        raise AdapterError(f"{model!r} is neither path/to/model.py:ClassName nor hooked_transformer:CONFIG, "
                           "but weights were given")
    if zoo is None:
        raise AdapterError(f"{model!r} reads as a zoo model id, but no zoo is known (give --zoo or a run directory)")
    from zoo.foreign.store import ForeignStore, is_foreign_zoo

    if is_foreign_zoo(zoo):  # a zoo of `zoolens zoo foreign`
        return ForeignStore(zoo).subject(model)
    return from_zoo(zoo, model)


def read(model: str, interpreter: str | Path, *, weights: str | Path | None = None,
         args: str | Path | Mapping[str, Any] | None = None, zoo: str | Path | None = None,
         hooks: Sequence[str] | None = None, k: int = 3, carriers: bool = True, out_dir: str | Path | None = None,
         tracking_uri: str | None = None, seed: int = 0) -> Reading:
    """Read one model with a trained interpreter: flagged behaviors with probabilities, predicted accuracy,
    architecture and corruption readings, and each flagged behavior's top-``k`` carriers confirmed by ablation."""
    interp, probes, run_dir = load_reader(interpreter, tracking_uri)
    if zoo is None and run_dir is not None and (run_dir / "zoo").is_dir():
        zoo = run_dir / "zoo"
    subject = load_subject(model, weights, args, zoo, hooks)
    reading = read_model(subject, interp, probes, k=k, carriers=carriers, seed=seed)
    files = write_outputs(reading, Path(out_dir)) if out_dir is not None else []
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        log_reading(reading, files, uri, {"model": model, "interpreter": str(interpreter), "k": k})
    return reading


def carrier_map_figure(reading: Reading, path: Path) -> Path:
    """Neurons x flagged behaviors heatmap of single-ablation carrier scores; chosen carriers outlined."""
    from cluster.tracking.plots import _save, plt

    cmap = reading.carrier_map
    behaviors = cmap.get("behaviors", [])
    neurons = cmap.get("neurons", [])
    fig, ax = plt.subplots(figsize=(max(4.5, 2.5 + 0.6 * len(behaviors)), 2 + min(0.12 * len(neurons), 14)))
    if behaviors and neurons:
        scores = np.array([cmap["scores"][b] for b in behaviors]).T  # [N, K]
        lim = max(float(np.abs(scores).max()), 1e-3)
        im = ax.imshow(scores, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        for col, b in enumerate(behaviors):
            for j in reading.carriers[b]["index"]:
                ax.add_patch(plt.Rectangle((col - 0.5, j - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.5))
        ax.set_xticks(range(len(behaviors)), behaviors, rotation=45, ha="right")
        step = max(1, len(neurons) // 40)
        ax.set_yticks(range(0, len(neurons), step), neurons[::step], fontsize=6)
        fig.colorbar(im, ax=ax, label="B's positives turned off minus 2 x others flipped")
    else:
        ax.text(0.5, 0.5, "no flagged behavior or no hidden neurons", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(f"carriers of {reading.model} (outlined: chosen)")
    return _save(fig, path)


def write_outputs(reading: Reading, out_dir: Path) -> list[Path]:
    """``read.json`` and ``carrier_map.png`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "read.json", reading.to_dict())
    return [out_dir / "read.json", carrier_map_figure(reading, out_dir / "carrier_map.png")]


def log_reading(reading: Reading, files: Sequence[Path], tracking_uri: str, params: Mapping[str, Any]) -> str:
    """One MLflow run in ``zoolens-read``: params, the readings as metrics, the files as artifacts; its run id."""
    import mlflow

    from cluster.tracking.runs import as_params

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(READ_EXPERIMENT)
    metrics = {f"p.{b}": p for b, p in reading.behaviors.items()}
    metrics.update({k: v for k, v in (("accuracy", reading.accuracy), ("corrupted", reading.corrupted)) if v is not None})
    with mlflow.start_run(run_name=f"read-{reading.model}", tags={"zoolens.stage": "read"}) as run:
        mlflow.log_params(as_params({**params, "flagged": reading.flagged}))
        mlflow.log_metrics(metrics)
        if not files:
            mlflow.log_dict(reading.to_dict(), "read.json")
        for f in files:
            mlflow.log_artifact(str(f))
        return run.info.run_id
