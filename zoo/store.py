"""The zoo store: one safetensors file and one Parquet manifest per finished cohort.

Layout::

    ZOO/zoo.json                    the recipe and code version that made the zoo
    ZOO/cohorts/c00000.safetensors  stacked weights of the cohort's M models
    ZOO/cohorts/c00000.parquet      one manifest row per model (written last: its presence marks the cohort done)

``ZOO`` is a directory path (local disk or a shared filesystem mounted on every node) or a
``file://``, ``s3://`` or ``gs://`` URI opened with :mod:`pyarrow.fs`. In a directory every
file is written to a temporary name, fsynced and renamed into place; through a URI every file
is one put (object stores make each object visible whole, or not at all). Either way a crash
never leaves a half-written cohort that looks finished, and a rerun resumes. A ``file://`` URI
always takes the URI code path, which is how the tests exercise it without a cloud account.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from zoo.arch import ArchSpec
from zoo.errors import ZoolensError
from zoo.families.base import Params

FILE_MODE = 0o644  # what atomic writes leave: readable by group and others, as open() under the usual umask would
VERIFIED = "verified.json"  # each cohort's file sizes and mtimes when its hashes were last checked (ZooStore.verify)
URI_SCHEMES = ("file", "s3", "gs")  # what pyarrow.fs opens without extra setup (credentials from the environment)


class ZooStoreError(ZoolensError):
    """A zoo that is missing, empty or corrupted."""


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://...`` strings (``Path`` objects are always local paths)."""
    return isinstance(location, str) and "://" in location


def check_uri_scheme(uri: str) -> str:
    """The URI unchanged, or ValueError naming the schemes that work."""
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in URI_SCHEMES:
        raise ValueError(f"unsupported storage URI {uri!r}: use a path or a {', '.join(s + '://' for s in URI_SCHEMES)} URI")
    return uri


def resolve_location(location: str | Path) -> str | Path:
    """A URI stays as it is (a string, checked when opened); a path becomes absolute (a ``Path``)."""
    return location if is_uri(location) else Path(location).expanduser().resolve()


@dataclass(frozen=True)
class Location:
    """A directory or a storage URI, opened: the filesystem and the path inside it."""

    fs: pafs.FileSystem
    path: str            # inside ``fs``
    uri: str             # for messages and other processes: the absolute directory path, or the URI
    local: Path | None   # the directory, when it is one


def open_location(location: str | Path, error: type[Exception] = ZooStoreError) -> Location:
    """Open a directory path (plain local filesystem) or a URI (``pyarrow.fs``); any problem is one ``error`` line."""
    resolved = resolve_location(location)
    if isinstance(resolved, Path):
        return Location(pafs.LocalFileSystem(), str(resolved), str(resolved), resolved)
    uri = resolved.rstrip("/")
    try:
        fs, path = pafs.FileSystem.from_uri(check_uri_scheme(uri))
    except (ValueError, OSError, pa.ArrowException) as e:
        raise error(f"cannot open {uri}: {str(e).splitlines()[0]}") from None
    return Location(fs, path.rstrip("/"), uri, None)


def read_fs_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """Whole content of one file; a missing file is always ``FileNotFoundError`` (object stores report it variously)."""
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(path) from None
        raise


def put_fs_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write one file in a single put (atomic per object on S3/GCS)."""
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` via a temporary file and rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; results are for the group to read, like any file written plainly
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_bytes(obj: Any) -> bytes:
    """The JSON files' one format: indented, sorted keys, trailing newline."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def model_sha256(params: Params, m: int) -> str:
    """Hash of model m's weights (parameter names in sorted order, raw little-endian bytes)."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name][m].contiguous().numpy().tobytes())
    return h.hexdigest()


class ZooStore:
    """Reads and writes a zoo at a directory path or a ``file://``, ``s3://`` or ``gs://`` URI.

    ``uri`` names the zoo in messages and for other processes (``ZooStore(store.uri)`` opens the
    same zoo); for a directory it is the absolute path. ``root`` and ``cohort_dir`` are ``Path``
    objects and exist for directories only.
    """

    def __init__(self, root: str | Path):
        loc = open_location(root)
        self.fs, self._base, self.uri, self._local_root = loc.fs, loc.path, loc.uri, loc.local

    @property
    def is_local(self) -> bool:
        """True when the zoo is a directory path (not a URI)."""
        return self._local_root is not None

    @property
    def root(self) -> Path:
        """The zoo directory (directory zoos only)."""
        if self._local_root is None:
            raise ZooStoreError(f"zoo at {self.uri} is not a local directory; this step needs a zoo directory path")
        return self._local_root

    @property
    def cohort_dir(self) -> Path:
        return self.root / "cohorts"

    # -- files -------------------------------------------------------------------
    def _path(self, rel: str) -> str:
        """Path of ``rel`` inside the filesystem."""
        return f"{self._base}/{rel}"

    def _where(self, rel: str) -> str:
        """How messages name ``rel``: the local path, or the full URI."""
        return f"{self.uri}/{rel}"

    def _write(self, rel: str, data: bytes) -> None:
        """Temp file + fsync + rename in a directory; one put through a URI."""
        if self._local_root is not None:
            atomic_write_bytes(self._local_root / rel, data)
        else:
            put_fs_bytes(self.fs, self._path(rel), data)

    def _read(self, rel: str) -> bytes:
        return read_fs_bytes(self.fs, self._path(rel))

    def _exists(self, rel: str = "") -> bool:
        path = self._path(rel) if rel else self._base
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _files(self, rel: str = "", recursive: bool = False) -> list[pafs.FileInfo]:
        """Files (not directories) under ``rel``; none when it does not exist."""
        selector = pafs.FileSelector(self._path(rel) if rel else self._base, allow_not_found=True, recursive=recursive)
        return [i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]

    # -- writing -----------------------------------------------------------------
    def write_meta(self, meta: dict[str, Any]) -> None:
        self._write("zoo.json", json_bytes(meta))

    def write_cohort(self, cohort_id: str, spec: ArchSpec, params: Params, rows: list[dict[str, Any]]) -> None:
        """Write a finished cohort: weights first, then the manifest that marks it done."""
        tensors = {k: v.detach().contiguous().cpu() for k, v in params.items()}
        meta = {"spec": spec.model_dump_json(), "model_ids": json.dumps([r["model_id"] for r in rows])}
        self._write(f"cohorts/{cohort_id}.safetensors", save_safetensors(tensors, metadata=meta))
        sink = pa.BufferOutputStream()
        table = pa.Table.from_pylist(rows)
        for i, f in enumerate(table.schema):  # an all-None column as strings, so cohorts that have values read with it
            if pa.types.is_null(f.type):
                table = table.set_column(i, f.name, table.column(i).cast(pa.string()))
        pq.write_table(table, sink)
        self._write(f"cohorts/{cohort_id}.parquet", sink.getvalue().to_pybytes())

    # -- reading -----------------------------------------------------------------
    def has_meta(self) -> bool:
        """True once ``zoo.json`` has been written."""
        return self._exists("zoo.json")

    def finished_cohorts(self) -> list[str]:
        """Ids of cohorts whose manifest (the done marker) is present."""
        names = (i.base_name for i in self._files("cohorts"))
        return sorted(n.removesuffix(".parquet") for n in names if n.startswith("c") and n.endswith(".parquet"))

    def require(self) -> list[str]:
        """The finished cohorts, or a clear error if the zoo is missing or empty."""
        if not self._exists():
            raise ZooStoreError(f"zoo not found: {self.uri}")
        cohorts = self.finished_cohorts()
        if not cohorts:
            raise ZooStoreError(f"zoo at {self.uri} has no finished cohorts (build it with 'zoolens zoo build')")
        return cohorts

    def read_meta(self) -> dict[str, Any]:
        try:
            return json.loads(self._read("zoo.json"))
        except FileNotFoundError:
            raise ZooStoreError(f"zoo metadata missing: {self._where('zoo.json')}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ZooStoreError(f"zoo metadata corrupted: {self._where('zoo.json')}: {e}") from None

    @contextlib.contextmanager
    def _manifest(self) -> Iterator[pads.Dataset]:
        """All finished cohorts' manifests as one Parquet dataset; unreadable files become one ZooStoreError."""
        files = [self._path(f"cohorts/{c}.parquet") for c in self.require()]
        try:
            yield pads.dataset(files, format="parquet", filesystem=self.fs)
        except (pa.ArrowInvalid, OSError) as e:
            raise ZooStoreError(f"zoo manifest corrupted in {self._where('cohorts')}: {e}") from None

    def read_manifest(self, columns: list[str] | None = None) -> pd.DataFrame:
        """All finished cohorts' manifest rows as one table."""
        with self._manifest() as dataset:
            return dataset.to_table(columns=columns).to_pandas()

    def manifest_columns(self) -> list[str]:
        """Names of the manifest's columns, read from the Parquet schema (no rows are read)."""
        with self._manifest() as dataset:
            return list(dataset.schema.names)

    def read_cohort_manifest(self, cohort_id: str) -> pd.DataFrame:
        rel = f"cohorts/{cohort_id}.parquet"
        try:
            return pq.read_table(pa.BufferReader(self._read(rel))).to_pandas()
        except FileNotFoundError:
            raise ZooStoreError(f"zoo file missing: {self._where(rel)}") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise ZooStoreError(f"zoo file corrupted: {self._where(rel)}: {e}") from None

    def load_cohort(self, cohort_id: str, verify: bool = True) -> tuple[ArchSpec, Params, pd.DataFrame]:
        """Weights, spec and manifest of one cohort; checks every model's sha256 when ``verify``."""
        rel = f"cohorts/{cohort_id}.safetensors"
        path = self._where(rel)
        manifest = self.read_cohort_manifest(cohort_id)
        try:
            data = self._read(rel)
            params = load_safetensors(data)
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8:8 + header_len])
            spec = ArchSpec.model_validate_json(header["__metadata__"]["spec"])
        except FileNotFoundError:
            raise ZooStoreError(f"zoo file missing: {path}") from None
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            raise ZooStoreError(f"zoo file corrupted: {path}: {e}") from None
        if verify:
            for m, (model_id, expected) in enumerate(zip(manifest["model_id"], manifest["sha256"])):
                found = model_sha256(params, m)
                if found != expected:
                    raise ZooStoreError(f"zoo file corrupted: {path}: weights of {model_id} do not match their sha256 "
                                        f"(recorded {expected[:16]}, read {found[:16]})")
        return spec, params, manifest

    def verify(self) -> int:
        """Check every finished cohort's weights against the recorded hashes; returns the number of models.

        Run in the driver before a stage streams the zoo, so a corrupted file is one line naming it and
        its hash, not a worker's traceback (and stale results of a since-corrupted zoo are not reused).
        A cohort whose files still have the size and modification time they had when last checked (or
        written by this zoo's build, ``stamp``) is not read again: only new or changed files cost a pass.
        """
        cohorts = self.require()
        stamps = self._read_stamps()
        now = self._file_stamps(cohorts)
        changed = [c for c in cohorts if stamps.get(c) != now[c]]
        passed = {}
        try:
            for c in changed:
                self.load_cohort(c, verify=True)
                passed[c] = now[c]
        finally:
            if passed:
                self._write(VERIFIED, json_bytes({**stamps, **passed}))  # what passed stays recorded
        return len(self.read_manifest(columns=["model_id"]))

    def stamp(self, cohorts: list[str]) -> None:
        """Record ``cohorts`` as verified as they are now (the build calls it for the cohorts it has just written,
        from the weights whose hashes it recorded), so ``verify`` does not read them again."""
        if cohorts:
            self._write(VERIFIED, json_bytes({**self._read_stamps(), **self._file_stamps(cohorts)}))

    def _read_stamps(self) -> dict[str, list[int]]:
        """Size and mtime (ns) of each cohort's two files when last verified; none when never, or unreadable."""
        try:
            stamps = json.loads(self._read(VERIFIED))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return stamps if isinstance(stamps, dict) else {}

    def _file_stamps(self, cohorts: list[str]) -> dict[str, list[int]]:
        """[size, mtime_ns] of each cohort's weights and manifest, as the filesystem reports them now."""
        info = {i.base_name: i for i in self._files("cohorts")}

        def of(name: str) -> list[int]:
            i = info.get(name)
            return [-1, -1] if i is None else [int(i.size), int(i.mtime_ns or 0)]

        return {c: of(f"{c}.safetensors") + of(f"{c}.parquet") for c in cohorts}

    def size_bytes(self) -> int:
        return sum(i.size for i in self._files(recursive=True))
