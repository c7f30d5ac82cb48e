"""Register trained interpreters; the ``champion`` alias moves only to a strictly better one (at the stored precision)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAMPION = "champion"
SCORE_TAG = "heldout_mean_balanced_accuracy"
SCORE_DIGITS = 6  # the precision the score tag stores, and the one scores are compared at


def register_interpreter(interp_dir: Path, name: str, score: float, tags: dict[str, str]) -> dict[str, Any]:
    """Log the interpreter (code + safetensors) in the active run, register a version, maybe move ``champion``."""
    info = _log_model(interp_dir)
    stored = round(float(score), SCORE_DIGITS)  # compared as stored: an equal score never moves the alias
    version = mlflow.register_model(info.model_uri, name, tags={SCORE_TAG: f"{stored:.{SCORE_DIGITS}f}", **tags})
    client = MlflowClient()
    previous = _champion_score(client, name)
    promoted = previous is None or stored > previous
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return {"name": name, "version": int(version.version), "champion": promoted,
            "previous_champion_score": previous, "uri": f"models:/{name}/{version.version}"}


def _log_model(interp_dir: Path) -> Any:
    """The interpreter as an MLflow model from code, without MLflow's "Failed to infer model signature" warning
    (its input is a table of signatures; there is no type hint to read one from)."""
    quiet = logging.getLogger("mlflow.pyfunc")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return mlflow.pyfunc.log_model(
            name="interpreter",
            python_model=str(Path(__file__).with_name("pyfunc.py")),
            artifacts={"interpreter": str(interp_dir)},
            code_paths=[str(REPO_ROOT / "interpreter"), str(REPO_ROOT / "zoo")],
            pip_requirements=["torch==2.13.0", "safetensors", "numpy", "pandas", "pydantic"],
        )
    finally:
        quiet.setLevel(level)


def _champion_score(client: MlflowClient, name: str) -> float | None:
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    value = mv.tags.get(SCORE_TAG)
    return round(float(value), SCORE_DIGITS) if value is not None else None
