"""Stage 2: stream the zoo through the probe set with Ray Data (:mod:`cluster.stages.cohorts`) and write signatures to Parquet."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import torch

from zoo.arch import ArchSpec
from zoo.errors import ZoolensError
from zoo.probes import ProbeSet, make_probe_set
from zoo.signatures import RECORD_COLUMNS, cohort_signatures, feature_names, signature_table, table_records
from zoo.store import ZooStore, atomic_write_json
from zoo.version import code_version

from cluster.config import ProbeConfig
from cluster.stages.cohorts import CohortProcessor, map_cohorts
from cluster.runtime import cluster_gpus

SUMMARY_KEYS = ("probe_sha256", "probe_version", "n_probes", "feature_names")  # of the meta, in a stage's summary
SIGNATURE_META = "_signatures.json"  # probe set, feature names, provenance ("_" keeps Parquet readers off it)


class SignatureError(ZoolensError):
    """Signatures are missing or do not fit the zoo."""


class SignatureExtractor(CohortProcessor):
    """Emits one signature row per model of each cohort it loads."""

    def __init__(self, zoo_dir: str, out_dir: str, behaviors: list[str], vocab: int, length: int, probe_cfg: ProbeConfig):
        super().__init__(zoo_dir, out_dir)
        self.probes = make_probe_set(behaviors, vocab, length, **probe_cfg.model_dump())

    def process(self, spec: ArchSpec, params: dict[str, torch.Tensor], manifest: pd.DataFrame) -> pa.Table:
        sig = cohort_signatures(spec, params, self.probes)
        return signature_table(list(manifest["model_id"]), spec.family, sig)


def probe_set_for(zoo_meta: dict[str, Any], probe_cfg: ProbeConfig) -> ProbeSet:
    zc = zoo_meta["config"]
    return make_probe_set(zc["behaviors"], zc["vocab"], zc["length"], **probe_cfg.model_dump())


def extractor_sha256() -> str:
    """Hash of the source that turns weights into signatures (features, probes, the families' forward passes)."""
    zoo_pkg = Path(__file__).resolve().parents[2] / "zoo"
    files = [zoo_pkg / "signatures.py", zoo_pkg / "probes.py", zoo_pkg / "behaviors.py", zoo_pkg / "arch.py",
             *sorted((zoo_pkg / "families").glob("*.py"))]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def finished_signatures(out_dir: Path, store: ZooStore, zoo_meta: dict[str, Any], probes: ProbeSet) -> dict[str, Any] | None:
    """The summary of signatures already in `out_dir` when they are exactly what extraction would write, else None.

    They must come from this zoo (fingerprint), this probe set, the same extraction code and cover every model.
    """
    path = Path(out_dir) / SIGNATURE_META
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    if (meta.get("zoo_fingerprint") != zoo_meta.get("fingerprint") or meta.get("probe_sha256") != probes.sha256
            or meta.get("extractor_sha256") != extractor_sha256()):
        return None
    n_rows = _dataset(out_dir).count_rows()
    if n_rows != len(store.read_manifest(columns=["model_id"])):
        return None
    info = {k: meta[k] for k in SUMMARY_KEYS}
    return {"signatures_dir": str(out_dir), "n_models": n_rows, "resumed": True, **info}


def extract_signatures(zoo_dir: Path | str, out_dir: Path, probe_cfg: ProbeConfig, num_actors: int,
                       progress: bool = False) -> dict[str, Any]:
    """Run the Ray Data pipeline; the output directory is overwritten, never appended to.

    A rerun whose signatures are already complete and current (see `finished_signatures`) returns at once.
    """
    store = ZooStore(zoo_dir)
    cohorts = store.require()
    meta = store.read_meta()
    zc = meta["config"]
    probes = probe_set_for(meta, probe_cfg)
    done = finished_signatures(out_dir, store, meta, probes)
    if done is not None:
        return done
    map_cohorts(SignatureExtractor, store.uri, cohorts, out_dir, num_actors, gpus=cluster_gpus() > 0,
                desc="signatures" if progress else None, behaviors=zc["behaviors"], vocab=zc["vocab"], length=zc["length"], probe_cfg=probe_cfg)
    n_rows = _dataset(out_dir).count_rows()
    record = probe_set_record(probes)
    atomic_write_json(Path(out_dir) / SIGNATURE_META, {
        **record, "zoo_dir": store.uri, "zoo_fingerprint": meta.get("fingerprint"), "code_version": code_version(),
        "extractor_sha256": extractor_sha256(),
    })
    info = {k: record[k] for k in SUMMARY_KEYS}
    return {"signatures_dir": str(out_dir), "n_models": n_rows, **info}


def probe_set_record(probes: ProbeSet) -> dict[str, Any]:
    """What ``SIGNATURE_META`` records of the probe set the signatures were read through (``read_probe_set`` reads it back)."""
    return {"probe_sha256": probes.sha256, "probe_version": probes.version, "n_probes": len(probes),
            "feature_names": feature_names(probes), "behaviors": list(probes.behaviors), "vocab": probes.vocab,
            "length": probes.length, "probe_tokens": probes.tokens.tolist(), "probe_behavior": probes.behavior.tolist(),
            "probe_is_positive": probes.is_positive.tolist()}


def _dataset(sig_dir: Path) -> pads.Dataset:
    return pads.dataset(str(sig_dir), format="parquet", exclude_invalid_files=True)


def read_signature_meta(sig_dir: Path) -> dict[str, Any]:
    path = Path(sig_dir) / SIGNATURE_META
    if not path.exists():
        raise SignatureError(f"signatures not found: {sig_dir} (run 'zoolens signatures extract' first)")
    return json.loads(path.read_text())


def read_probe_set(sig_dir: Path) -> ProbeSet:
    """The probe set the signatures in ``sig_dir`` were read through, checked against the hash they recorded."""
    meta = read_signature_meta(sig_dir)
    try:
        probes = ProbeSet(np.asarray(meta["probe_tokens"], dtype=np.int64), np.asarray(meta["probe_behavior"], dtype=np.int64),
                          np.asarray(meta["probe_is_positive"], dtype=bool), tuple(meta["behaviors"]), int(meta["vocab"]),
                          int(meta["length"]), meta["probe_version"])
    except KeyError as exc:
        raise SignatureError(f"{Path(sig_dir) / SIGNATURE_META} does not record its probe set ({exc.args[0]} missing)") from None
    if probes.sha256 != meta.get("probe_sha256"):
        raise SignatureError(f"{Path(sig_dir) / SIGNATURE_META}: the recorded probe set does not match its hash")
    return probes


def read_signatures(sig_dir: Path, model_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Load signature rows (optionally a subset of models) as interpreter records, sorted by model id.

    The sort matters: Ray Data names its Parquet files after the write, so their order (and the rows'
    order without the sort) changes from one extraction to the next, and with it the interpreter's batches.
    """
    read_signature_meta(sig_dir)
    flt = pads.field("model_id").isin(model_ids) if model_ids is not None else None
    dataset = _dataset(sig_dir)
    columns = [c for c in RECORD_COLUMNS if c in dataset.schema.names]  # older signatures lack weight_stats
    table = dataset.to_table(filter=flt, columns=columns).sort_by("model_id")
    if table.num_rows == 0:
        raise SignatureError(f"no signatures in {sig_dir}")
    return table_records(table)  # vectorised: a Python float per stored value took GBs for 70,000 models
