"""Register trained interpreters; the ``champion`` alias moves only to a better one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAMPION = "champion"
SCORE_TAG = "heldout_mean_balanced_accuracy"


def register_interpreter(interp_dir: Path, name: str, score: float, tags: dict[str, str]) -> dict[str, Any]:
    """Log the interpreter (code + safetensors) in the active run, register a version, maybe move ``champion``."""
    info = mlflow.pyfunc.log_model(
        name="interpreter",
        python_model=str(Path(__file__).with_name("pyfunc.py")),
        artifacts={"interpreter": str(interp_dir)},
        code_paths=[str(REPO_ROOT / "interpreter"), str(REPO_ROOT / "zoo")],
        pip_requirements=["torch==2.13.0", "safetensors", "numpy", "pandas", "pydantic"],
    )
    version = mlflow.register_model(info.model_uri, name, tags={SCORE_TAG: f"{score:.6f}", **tags})
    client = MlflowClient()
    previous = _champion_score(client, name)
    promoted = previous is None or score > previous
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return {"name": name, "version": int(version.version), "champion": promoted,
            "previous_champion_score": previous, "uri": f"models:/{name}/{version.version}"}


def _champion_score(client: MlflowClient, name: str) -> float | None:
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    value = mv.tags.get(SCORE_TAG)
    return float(value) if value is not None else None
