"""Signatures as Ray Data datasets: one split's rows streamed from Parquet in a fixed order, and rows as records.

The interpreter's stages read signatures through these instead of loading a split into one Python list, so a
zoo of a million models streams (bounded memory per process) and Ray Train's workers each read their own shard.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from zoo.signatures import RECORD_COLUMNS, table_records

from cluster.stages.signatures import SignatureError, read_signature_meta


def signature_files(sig_dir: Path | str) -> list[str]:
    """The signature Parquet files, ordered by their first model id.

    Ray Data names files after the write, so their listed order changes from one extraction to the next; the
    rows inside a file (one cohort's models, in order) do not. Reads only each file's footer statistics.
    """
    read_signature_meta(Path(sig_dir))
    files = pads.dataset(str(sig_dir), format="parquet", exclude_invalid_files=True).files
    if not files:
        raise SignatureError(f"no signatures in {sig_dir}")
    return sorted(files, key=_first_model_id)


def _first_model_id(path: str) -> str:
    """The smallest model id in one Parquet file (footer statistics; the column itself where they are missing)."""
    meta = pq.ParquetFile(path).metadata
    column = meta.schema.names.index("model_id")
    mins = [meta.row_group(g).column(column).statistics for g in range(meta.num_row_groups)]
    if mins and all(s is not None and s.has_min_max for s in mins):
        return min(str(s.min) for s in mins)
    ids = pq.read_table(path, columns=["model_id"]).column("model_id")
    return str(pc.min(ids).as_py()) if len(ids) else ""


def _keep_ids(batch: pa.Table, keep: pa.Array) -> pa.Table:
    """The rows of `batch` whose model id is in `keep`."""
    return batch.filter(pc.is_in(batch.column("model_id"), value_set=keep))


def split_dataset(sig_dir: Path | str, model_ids: Sequence[str]) -> ray.data.Dataset:
    """A lazy Ray Data dataset of the given models' signature rows, in file order (by model id within a cohort).

    One read task per signature file, each reading its file with pyarrow and keeping the given models. Not
    ``ray.data.read_parquet``: its planning tasks (listing, footer reading) held 0.9 and 2.7 GB beside a Train
    worker on a 250,000-model zoo, the stage's peak, where the file list and order are already known here.
    Nothing is read until it is iterated; iterate with ``preserve_order`` (``ordered_options``) for a fixed order.
    """
    files = signature_files(sig_dir)
    keep = pa.array(sorted(model_ids), pa.string())
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    ds = ds.map_batches(_read_files, fn_kwargs={"keep": keep}, batch_format="pyarrow", batch_size=1)
    ds.context.enable_progress_bars = False  # read every epoch inside Train workers: bars and banners would flood the log
    ds.context.print_on_execution_start = False
    return ds


def _read_files(batch: pa.Table, keep: pa.Array) -> pa.Table:
    """The record columns of the files named in `batch`, only the rows of models in `keep`."""
    tables = [pq.read_table(path, columns=RECORD_COLUMNS) for path in batch.column("path").to_pylist()]
    return _keep_ids(pa.concat_tables(tables), keep)


def ordered_options() -> Any:
    """Ray Data execution options that keep rows in dataset order (deterministic epochs and shards)."""
    from ray.data import ExecutionOptions

    # not DataConfig.default_ingest_options(): it copies the deprecated exclude_resources, and Ray warns on every run
    current = ray.data.DataContext.get_current().execution_options
    return ExecutionOptions(resource_limits=stream_limits(current.resource_limits), preserve_order=True,
                            verbose_progress=current.verbose_progress)


STREAM_STORE_BYTES = 2**30
"""Object-store memory one signature stream may fill ahead of its reader. Ray Data's default is half of the
whole store (3.5 of 7 GB on a 24 GB node), and a Train worker then maps ever more of the store as a large zoo
streams through it (1.7 GB of its 4.3 GB at 250,000 models). A few cohort files' rows keep a reader fed at any
zoo size."""


def stream_limits(limits: Any) -> Any:
    """Ray Data resource limits with the object store capped at STREAM_STORE_BYTES (a tighter cap set is kept)."""
    return limits.copy(object_store_memory=min(limits.object_store_memory, STREAM_STORE_BYTES))


def iter_record_chunks(ds: ray.data.Dataset | Any, rows: int, **iter_kwargs: Any) -> Iterator[list[dict[str, Any]]]:
    """Stream a dataset (or a Ray Train shard) as lists of at most `rows` records."""
    for batch in ds.iter_batches(batch_size=rows, batch_format="pyarrow", **iter_kwargs):
        yield table_records(batch)


def read_split_chunks(sig_dir: Path | str, model_ids: Sequence[str], rows: int,
                      shuffle_seed: int | None = None) -> Iterator[list[dict[str, Any]]]:
    """The given models' signature records as lists of at most `rows`, read file by file with pyarrow in this
    process (no Ray Data): for code that already holds its CPUs inside a Ray task or Tune trial, where Ray Data's
    read tasks would wait for CPUs the caller holds. In file order (by model id within a cohort); with
    `shuffle_seed`, the files in a seeded order and each chunk's rows permuted. Memory: one chunk and one batch."""
    keep = pa.array(sorted(model_ids), pa.string())
    files = signature_files(sig_dir)
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    if rng is not None:
        files = [files[i] for i in rng.permutation(len(files))]
    pending: list[pa.Table] = []
    held = 0

    def emit(table: pa.Table) -> list[dict[str, Any]]:
        if rng is not None:
            table = table.take(pa.array(rng.permutation(table.num_rows)))
        return table_records(table)

    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=RECORD_COLUMNS):
            part = _keep_ids(pa.Table.from_batches([batch]), keep)
            if part.num_rows:
                pending.append(part)
                held += part.num_rows
            while held >= rows:
                table = pa.concat_tables(pending).combine_chunks()
                yield emit(table.slice(0, rows))
                rest = table.slice(rows)
                pending, held = ([rest] if rest.num_rows else []), rest.num_rows
    if held:
        yield emit(pa.concat_tables(pending).combine_chunks())


def ordered(ds: ray.data.Dataset) -> ray.data.Dataset:
    """The dataset iterated in its own order (for driver-side passes: the scaler, evaluation)."""
    ds.context.execution_options.preserve_order = True
    ds.context.execution_options.resource_limits = stream_limits(ds.context.execution_options.resource_limits)
    return ds
