"""The edit stages on the cluster: one Ray task per stage, with every CPU of the cluster.

The work itself is the plain library :mod:`interpreter.editing` (training in ``train``, scoring in
``evaluate``); this module only places it on a Ray worker. One edit of one model (``zoolens edit MODEL``)
runs in the calling process and never comes here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
import torch

from interpreter.editing.config import EditConfig
from interpreter.editing.context import open_context
from interpreter.editing.evaluate import evaluate_edits
from interpreter.editing.summary import summarize
from interpreter.editing.train import train_stage

from cluster.runtime import cluster_cpus, code_env


@ray.remote(max_retries=0)
def edit_task(kind: str, zoo_dir: str, interp_dir: str, editor_dir: str, probe_cfg: dict, cfg: EditConfig,
              threads: int, progress: bool = False) -> dict[str, Any]:
    """Run one edit stage on a Ray worker: "train" or "evaluate"."""
    torch.set_num_threads(threads)
    ctx = open_context(zoo_dir, Path(interp_dir), probe_cfg)
    if kind == "train":
        from tqdm.auto import tqdm

        with tqdm(total=cfg.editor.steps, desc="editor", disable=not progress) as bar:
            return train_stage(ctx, cfg, Path(editor_dir), lambda step, row: _tick(bar, step, row))
    if kind == "evaluate":
        result = evaluate_edits(ctx, cfg, Path(editor_dir), progress=progress)
        return {**summarize(result), "verdicts": result["verdicts"], "localization_table": result["localization"],
                "latents": result["latents"]}
    raise ValueError(f"unknown edit job '{kind}'")


def _tick(bar: Any, step: int, row: dict[str, float]) -> None:
    """Advance the editor's progress bar, showing its loss and agreement every 50 steps."""
    bar.update(1)
    if step % 50 == 0:
        bar.set_postfix(loss=f"{row['loss']:.3f}", agree=f"{row['acc']:.3f}")


def run_edit_task(kind: str, zoo_dir: Path | str, interp_dir: Path, editor_dir: Path, probe_cfg: dict, cfg: EditConfig,
                  progress: bool = False) -> dict[str, Any]:
    """Submit an edit stage to the cluster with every CPU of it and wait for the result."""
    cpus = cluster_cpus()
    return ray.get(edit_task.options(num_cpus=cpus, **code_env()).remote(kind, str(zoo_dir), str(interp_dir), str(editor_dir),
                                                          probe_cfg, cfg, cpus, progress))
