"""The zoo store: one safetensors file and one Parquet manifest per finished cohort.

Layout::

    ZOO/zoo.json                    the recipe and code version that made the zoo
    ZOO/cohorts/c00000.safetensors  stacked weights of the cohort's M models
    ZOO/cohorts/c00000.parquet      one manifest row per model (written last: its presence marks the cohort done)

Every file is written to a temporary name and renamed into place, so a crash
never leaves a half-written cohort that looks finished, and a rerun resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zoo.arch import ArchSpec
from zoo.errors import ZoolensError
from zoo.families.base import Params


class ZooStoreError(ZoolensError):
    """A zoo that is missing, empty or corrupted."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` via a temporary file and rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def model_sha256(params: Params, m: int) -> str:
    """Hash of model m's weights (parameter names in sorted order, raw little-endian bytes)."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name][m].contiguous().numpy().tobytes())
    return h.hexdigest()


class ZooStore:
    """Reads and writes a zoo directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.cohort_dir = self.root / "cohorts"

    # -- writing -----------------------------------------------------------------
    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.root / "zoo.json", meta)

    def write_cohort(self, cohort_id: str, spec: ArchSpec, params: Params, rows: list[dict[str, Any]]) -> None:
        """Write a finished cohort: weights first, then the manifest that marks it done."""
        tensors = {k: v.detach().contiguous().cpu() for k, v in params.items()}
        meta = {"spec": spec.model_dump_json(), "model_ids": json.dumps([r["model_id"] for r in rows])}
        weights = self.cohort_dir / f"{cohort_id}.safetensors"
        weights.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=weights.parent, prefix=f".{weights.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, weights)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        atomic_write_bytes(self.cohort_dir / f"{cohort_id}.parquet", sink.getvalue().to_pybytes())

    # -- reading -----------------------------------------------------------------
    def finished_cohorts(self) -> list[str]:
        """Ids of cohorts whose manifest (the done marker) is present."""
        if not self.cohort_dir.is_dir():
            return []
        return sorted(p.stem for p in self.cohort_dir.glob("c*.parquet"))

    def require(self) -> list[str]:
        """The finished cohorts, or a clear error if the zoo is missing or empty."""
        if not self.root.exists():
            raise ZooStoreError(f"zoo not found: {self.root}")
        cohorts = self.finished_cohorts()
        if not cohorts:
            raise ZooStoreError(f"zoo at {self.root} has no finished cohorts (build it with 'zoolens zoo build')")
        return cohorts

    def read_meta(self) -> dict[str, Any]:
        path = self.root / "zoo.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise ZooStoreError(f"zoo metadata missing: {path}") from None
        except json.JSONDecodeError as e:
            raise ZooStoreError(f"zoo metadata corrupted: {path}: {e}") from None

    def read_manifest(self, columns: list[str] | None = None) -> pd.DataFrame:
        """All finished cohorts' manifest rows as one table."""
        cohorts = self.require()
        files = [str(self.cohort_dir / f"{c}.parquet") for c in cohorts]
        try:
            return pads.dataset(files, format="parquet").to_table(columns=columns).to_pandas()
        except (pa.ArrowInvalid, OSError) as e:
            raise ZooStoreError(f"zoo manifest corrupted in {self.cohort_dir}: {e}") from None

    def read_cohort_manifest(self, cohort_id: str) -> pd.DataFrame:
        path = self.cohort_dir / f"{cohort_id}.parquet"
        try:
            return pq.read_table(path).to_pandas()
        except FileNotFoundError:
            raise ZooStoreError(f"zoo file missing: {path}") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise ZooStoreError(f"zoo file corrupted: {path}: {e}") from None

    def load_cohort(self, cohort_id: str, verify: bool = True) -> tuple[ArchSpec, Params, pd.DataFrame]:
        """Weights, spec and manifest of one cohort; checks every model's sha256 when ``verify``."""
        path = self.cohort_dir / f"{cohort_id}.safetensors"
        manifest = self.read_cohort_manifest(cohort_id)
        try:
            params = load_file(path)
            with open(path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(header_len))
            spec = ArchSpec.model_validate_json(header["__metadata__"]["spec"])
        except FileNotFoundError:
            raise ZooStoreError(f"zoo file missing: {path}") from None
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            raise ZooStoreError(f"zoo file corrupted: {path}: {e}") from None
        if verify:
            for m, (model_id, expected) in enumerate(zip(manifest["model_id"], manifest["sha256"])):
                if model_sha256(params, m) != expected:
                    raise ZooStoreError(f"zoo file corrupted: {path}: weights of {model_id} do not match their sha256")
        return spec, params, manifest

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

