"""``zoolens zoo foreign``: train a foreign zoo (``zoo.foreign``) on Ray actors, one chunk of models per call.

Each chunk's models train one after another with the ordinary per-model loop and are written before the chunk's
manifest, which marks it done, so an interrupted build resumes with the same command. Then every model's signature
is read through the adapter into ``FOREIGN/signatures/`` (the built-in Parquet schema, with the probe set's
``_signatures.json``), so ``read``, the interpreter's scoring and the baselines take them like a zoo's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ray
from ray.util import ActorPool

from zoo.errors import ZoolensError
from zoo.foreign.store import ForeignStore
from zoo.foreign.train import ForeignZooConfig, constructor_args, model_plan, train_one
from zoo.version import code_version

from cluster.runtime import cluster_cpus

CHUNK = 10  # models per actor call: one manifest file each


class ForeignZooError(ZoolensError):
    """A foreign zoo directory made from another recipe."""


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


@ray.remote(num_cpus=1)
def _signature_rows(root: str, model_ids: list[str], probes: Any) -> Any:
    """Signature rows (the built-in Parquet schema) of some foreign models, read through the adapter."""
    import pyarrow as pa
    import torch

    from zoo.adapters.signature import subject_signature_table

    torch.set_num_threads(1)
    store = ForeignStore(root)
    manifest = store.read_manifest().set_index("model_id")
    return pa.concat_tables([subject_signature_table(store.subject(m), probes, str(manifest.loc[m, "arch"]), m)
                             for m in model_ids])


def extract_foreign_signatures(cfg: ForeignZooConfig, out_dir: Path) -> dict[str, Any]:
    """Every model's signature into ``FOREIGN/signatures`` with the probe set recorded as the signature stage does."""
    import pyarrow.parquet as pq

    from zoo.probes import make_probe_set
    from zoo.store import atomic_write_json

    from cluster.stages.signatures import SIGNATURE_META, probe_set_record

    store = ForeignStore(out_dir)
    ids = list(store.read_manifest()["model_id"])
    probes = make_probe_set(cfg.behaviors, cfg.vocab, cfg.length, **cfg.probes)
    sig_dir = store.root / "signatures"
    sig_dir.mkdir(parents=True, exist_ok=True)
    parts = [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)]
    refs = [_signature_rows.remote(str(store.root), part, probes) for part in parts]
    for i, ref in enumerate(refs):
        pq.write_table(ray.get(ref), sig_dir / f"part-{i:05d}.parquet")
    atomic_write_json(sig_dir / SIGNATURE_META, {**probe_set_record(probes), "zoo_dir": str(store.root),
                                                 "code_version": code_version()})
    return {"signatures_dir": str(sig_dir), "n_models": len(ids), "probe_sha256": probes.sha256}
