"""What every analysis and experiment returns, and the one writer of its files.

A :class:`Result` is a page (Markdown lines), a table, headline numbers and at most one figure.
:func:`write_result` turns it into ``NAME.md``, ``NAME.json`` and ``NAME.png`` under a run directory;
the caller (``cluster/``) logs those files to MLflow. :func:`publish` copies them into
``docs/results/``, an explicit step so no command writes into the source tree by itself.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

RESULTS_DIR = Path("docs/results")  # where published pages live


@dataclass
class Result:
    """One analysis or experiment's outcome.

    ``name`` is the file stem; ``summary`` the headline numbers (logged as MLflow metrics); ``page`` the
    Markdown lines of the results page; ``data`` whatever else the JSON should keep (rows, config, history);
    ``steps`` per-step metrics ``(step, {name: value})`` for MLflow's metric histories.
    """

    name: str
    table: pd.DataFrame
    summary: dict[str, Any]
    page: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    figure: Figure | None = None
    steps: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def write_result(result: Result, out_dir: str | Path) -> list[Path]:
    """Write NAME.md, NAME.json (summary, table, data) and NAME.png (if there is a figure) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{result.name}.md", out / f"{result.name}.json"
    md.write_text("\n".join(result.page) + "\n")
    payload = {"name": result.name, "summary": result.summary, "table": result.table.to_dict(orient="records"), **result.data}
    js.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    paths = [md, js]
    if result.figure is not None:
        result.figure.tight_layout()
        result.figure.savefig(out / f"{result.name}.png", dpi=110)
        paths.append(out / f"{result.name}.png")
    return paths


def publish(paths: Sequence[str | Path], dest: str | Path = RESULTS_DIR) -> list[Path]:
    """Copy a result's files (md/json/png) into ``dest`` (default ``docs/results``); returns the copies."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(p, dest / Path(p).name)) for p in paths]


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A pipe table, floats to ``digits`` decimals (no dependency on the optional ``tabulate``)."""
    def cell(v: Any) -> str:
        return f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _json_default(v: Any) -> Any:
    """numpy scalars and arrays as Python values; anything else JSON lacks as a float (as before: tensors' items)."""
    return v.tolist() if isinstance(v, (np.ndarray, np.generic)) else float(v)
