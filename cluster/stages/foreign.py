"""``zoolens zoo foreign``: train a foreign zoo (``zoo.foreign``) on Ray actors, one chunk of models per call.

Each chunk's models train one after another with the ordinary per-model loop and are written before the chunk's
manifest, which marks it done, so an interrupted build resumes with the same command. Then every model's signature
is read through the adapter into ``FOREIGN/signatures/`` (the built-in Parquet schema, with the probe set's
``_signatures.json``), so ``read``, the interpreter's scoring and the baselines take them like a zoo's.
``zoolens signatures extract CONFIG --zoo FOREIGN`` reads them through a pipeline config's probe set instead, into
that run's ``signatures/`` (:func:`extract_foreign_signatures` serves both).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import ray
from ray.util import ActorPool
from tqdm.auto import tqdm

from zoo.errors import ZoolensError
from zoo.foreign.store import ForeignStore
from zoo.foreign.train import ForeignZooConfig, constructor_args, model_plan, train_one
from zoo.probes import ProbeSet
from zoo.store import atomic_write_json
from zoo.version import code_version

from cluster.runtime import cluster_cpus
from cluster.stages.cohorts import part_path, write_part
from cluster.stages.signatures import SIGNATURE_META, SUMMARY_KEYS, probe_set_record

CHUNK = 10  # models per actor call: one manifest file each
PARTS_META = "_parts.json"  # which zoo and probe set the parts in a signature directory were read from


class ForeignZooError(ZoolensError):
    """A foreign zoo directory made from another recipe, or read through a probe set it does not fit."""


@ray.remote(max_restarts=2, max_task_retries=2)
class ForeignTrainer:
    """Ray actor: trains chunks of foreign models one model at a time and writes them."""

    def __init__(self, cfg: ForeignZooConfig, root: str) -> None:
        import torch

        torch.set_num_threads(1)
        self.cfg, self.store = cfg, ForeignStore(root)

    def train(self, chunk_id: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
        rows = []
        for entry in entries:
            module, row = train_one(entry, self.cfg)
            self.store.write_model(entry["model_id"], entry["arch"], constructor_args(entry), module)
            rows.append(row)
        self.store.write_chunk(chunk_id, rows)
        return {"chunk": chunk_id, "n_models": len(rows), "pid": os.getpid()}


def chunks(cfg: ForeignZooConfig) -> list[tuple[str, list[dict[str, Any]]]]:
    """The plan cut into chunks of one architecture each."""
    out = []
    plan = model_plan(cfg)
    for arch in cfg.architectures:
        mine = [e for e in plan if e["arch"] == arch]
        out += [(f"{arch}-{i // CHUNK:04d}", mine[i:i + CHUNK]) for i in range(0, len(mine), CHUNK)]
    return out


def build_foreign(cfg: ForeignZooConfig, out_dir: Path, n_actors: int | None = None) -> dict[str, Any]:
    """Train every chunk not yet in the store; a rerun skips finished chunks."""
    store = ForeignStore(out_dir)
    if (store.root / "foreign.json").is_file():
        if store.read_meta().get("config") != cfg.model_dump(mode="json"):
            raise ForeignZooError(f"foreign zoo at {store.root} was built from another recipe; choose a new directory")
    else:
        store.write_meta({"config": cfg.model_dump(mode="json"), "code_version": code_version(),
                          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    done = set(store.finished_chunks())
    todo = [c for c in chunks(cfg) if c[0] not in done]
    t0 = time.perf_counter()
    trained = 0
    if todo:
        actors = [ForeignTrainer.remote(cfg, str(store.root)) for _ in range(min(n_actors or cluster_cpus(), len(todo)))]
        for result in ActorPool(actors).map_unordered(lambda a, c: a.train.remote(*c), todo):
            trained += result["n_models"]
        for a in actors:
            ray.kill(a)
    return {"foreign_dir": str(store.root), "n_models": len(model_plan(cfg)), "models_trained": trained,
            "chunks_skipped": len(chunks(cfg)) - len(todo), "seconds": time.perf_counter() - t0}


def check_foreign_fit(store: ForeignStore, vocab: int, length: int) -> None:
    """ForeignZooError (one line) when the foreign zoo's sequences are not what a probe set of ``vocab``/``length`` holds."""
    zc = store.read_meta().get("config", {})
    if (zc.get("vocab"), zc.get("length")) != (vocab, length):
        raise ForeignZooError(f"foreign zoo at {store.root} has vocabulary {zc.get('vocab')} and length {zc.get('length')}, "
                              f"but the probe set has vocabulary {vocab} and length {length}")


@ray.remote(num_cpus=1)
def _signature_part(root: str, chunk_id: str, probes: ProbeSet, path: str) -> int:
    """Read one chunk's signatures through the adapter and write them atomically as one Parquet part (the built-in
    schema); returns its rows."""
    import pyarrow as pa
    import torch

    from zoo.adapters.signature import subject_signature_table

    torch.set_num_threads(1)
    store = ForeignStore(root)
    rows = store.read_chunk(chunk_id)
    table = pa.concat_tables([subject_signature_table(store.subject(m), probes, str(arch), m)
                              for m, arch in zip(rows["model_id"], rows["arch"])])
    write_part(table, Path(path))
    return table.num_rows


def _keep_or_clear(sig_dir: Path, record: dict[str, Any]) -> None:
    """Keep the parts in ``sig_dir`` when they were read from the same zoo through the same probe set (``record``);
    else empty it (a signature directory is overwritten, never appended to). Then record what its parts are."""
    marker = sig_dir / PARTS_META
    if not (marker.is_file() and json.loads(marker.read_text()) == record):
        shutil.rmtree(sig_dir, ignore_errors=True)
    sig_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, record)


def extract_foreign_signatures(foreign_dir: Path | str, sig_dir: Path, probes: ProbeSet,
                               progress: bool = False) -> dict[str, Any]:
    """Every foreign model's signature through ``probes`` into ``sig_dir``: one Ray task and one part per chunk, then
    the probe set recorded as the signature stage records it. A rerun through the same probe set reads only the chunks
    without a part (new ones, or those an interrupted run left)."""
    store = ForeignStore(foreign_dir)
    check_foreign_fit(store, probes.vocab, probes.length)
    n_models = len(store.read_manifest())
    chunk_ids = store.finished_chunks()
    sig_dir = Path(sig_dir)
    _keep_or_clear(sig_dir, {"foreign_dir": str(store.root), "probe_sha256": probes.sha256})
    for stale in set(sig_dir.glob("part-*.parquet")) - {part_path(sig_dir, c) for c in chunk_ids}:
        stale.unlink()
    todo = [c for c in chunk_ids if not part_path(sig_dir, c).exists()]
    shared = ray.put(probes)
    refs = [_signature_part.remote(str(store.root), c, shared, str(part_path(sig_dir, c))) for c in todo]
    with tqdm(total=len(refs), desc="signatures", unit="chunk", disable=not progress) as bar:
        while refs:
            done, refs = ray.wait(refs)
            ray.get(done)
            bar.update(len(done))
    record = probe_set_record(probes)
    atomic_write_json(sig_dir / SIGNATURE_META, {**record, "zoo_dir": str(store.root), "foreign": True,
                                                 "code_version": code_version()})
    return {"signatures_dir": str(sig_dir), "n_models": n_models, "chunks_read": len(todo),
            "chunks_skipped": len(chunk_ids) - len(todo), "resumed": not todo, **{k: record[k] for k in SUMMARY_KEYS}}
