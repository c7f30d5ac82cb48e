"""A foreign zoo on disk: one safetensors file per model (its architecture and constructor arguments in the header
metadata, never a pickle) and one Parquet manifest per finished chunk, each written atomically so a rerun resumes.

Layout::

    FOREIGN/foreign.json              the recipe
    FOREIGN/models/<id>.safetensors   weights; metadata {"arch", "args" (JSON)}
    FOREIGN/chunks/<chunk>.parquet    manifest rows of a finished chunk (written last: the done marker)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, safe_open, save

from zoo.adapters.sources import hooked_transformer, load_state
from zoo.adapters.subject import ModuleSubject
from zoo.foreign.architectures import ARCHITECTURES
from zoo.store import ZooStoreError, atomic_write_bytes, atomic_write_json


def is_foreign_zoo(location: str | Path) -> bool:
    """Whether ``location`` is a foreign zoo's directory (it holds ``foreign.json``); a storage URI never is."""
    return "://" not in str(location) and (Path(location).expanduser() / "foreign.json").is_file()


class ForeignStore:
    """Reads and writes a foreign zoo in a directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.root / "foreign.json", meta)

    def read_meta(self) -> dict[str, Any]:
        path = self.root / "foreign.json"
        if not path.is_file():
            raise ZooStoreError(f"not a foreign zoo (no foreign.json): {self.root}")
        return json.loads(path.read_text())

    def write_model(self, model_id: str, arch: str, args: dict[str, Any], module: torch.nn.Module) -> None:
        tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        atomic_write_bytes(self.root / "models" / f"{model_id}.safetensors",
                           save(tensors, metadata={"arch": arch, "args": json.dumps(args)}))

    def write_chunk(self, chunk_id: str, rows: list[dict[str, Any]]) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        atomic_write_bytes(self.root / "chunks" / f"{chunk_id}.parquet", sink.getvalue().to_pybytes())

    def finished_chunks(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "chunks").glob("*.parquet"))

    def read_manifest(self) -> pd.DataFrame:
        files = sorted((self.root / "chunks").glob("*.parquet"))
        if not files:
            raise ZooStoreError(f"foreign zoo at {self.root} has no finished models")
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).sort_values("model_id", ignore_index=True)

    def read_chunk(self, chunk_id: str) -> pd.DataFrame:
        """The manifest rows of one finished chunk."""
        return pd.read_parquet(self.root / "chunks" / f"{chunk_id}.parquet")

    def size_bytes(self) -> int:
        """Bytes of every file under the directory (weights, manifests, signatures)."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def check_weights(self, model_ids: list[str]) -> None:
        """ZooStoreError naming the first model whose weights file is missing."""
        missing = [m for m in model_ids if not self.weights_path(m).is_file()]
        if missing:
            raise ZooStoreError(f"foreign zoo at {self.root}: {len(missing)} model(s) in the manifest have no weights "
                                f"file (first: {self.weights_path(missing[0])})")

    def weights_path(self, model_id: str) -> Path:
        return self.root / "models" / f"{model_id}.safetensors"

    def load_module(self, model_id: str) -> tuple[str, dict[str, Any], torch.nn.Module]:
        """(architecture, constructor arguments, the model in eval mode)."""
        path = self.weights_path(model_id)
        if not path.is_file():
            raise ZooStoreError(f"foreign model {model_id!r} not found: {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        arch, args = meta.get("arch"), json.loads(meta.get("args", "{}"))
        if arch == "transformer":
            module = hooked_transformer(args)
        elif arch in ARCHITECTURES:
            module = ARCHITECTURES[arch](**args)
        else:
            raise ZooStoreError(f"{path}: unknown architecture {arch!r}")
        load_state(module, load_file(str(path)), arch)
        return arch, args, module.eval()

    def subject(self, model_id: str) -> ModuleSubject:
        """The model read through the adapter's default hook rule."""
        arch, args, module = self.load_module(model_id)
        meta = self.read_meta().get("config", {})
        return ModuleSubject(module, name=model_id, vocab=meta.get("vocab"), length=meta.get("length"),
                             source={"source": "foreign", "arch": arch, "args": args})
