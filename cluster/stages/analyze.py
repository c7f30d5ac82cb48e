"""``zoolens analyze``: learning coefficient, grokking, dictionaries and patching, run and recorded.

The analyses are plain functions in :mod:`zoo.experiments` (a recipe in, a Result out). Here they
get their placement and their records: experiments with known answers (LLC validation, the LLC
trajectory, grokking) run in the driver; zoo-wide ones (``sae``, ``llc``, ``patching``) stream the
zoo's cohorts through a pool of Ray Data tasks (:mod:`cluster.stages.cohorts`, one Parquet row per model).
Every command is one MLflow run (experiment ``zoolens-analysis``) and writes under its run
directory; ``publish_to`` also copies the page into ``docs/results/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import pandas as pd
import pyarrow as pa
import torch
from pydantic import BaseModel

from zoo.arch import ArchSpec
from zoo.experiments.result import Result
from zoo.experiments.zoo_analysis import ZooAnalysis, analyze_cohort, zoo_report
from zoo.store import ZooStore

from cluster.stages.cohorts import CohortProcessor, map_cohorts
from cluster.config import RayConfig
from cluster.tracking.results import record, run_recorded, start_tracking
from cluster.runtime import init_ray
from cluster.tracking.runs import as_params, start_run

EXPERIMENT = "zoolens-analysis"
RUN_ROOT = Path("runs/analysis")  # the default MLflow store and run directories of the driver analyses
R = TypeVar("R", bound=BaseModel)


def run_analysis(fn: Callable[[R], Result], cfg: R, stage: str, tracking_uri: str | None = None,
                 out_dir: str | Path | None = None, publish_to: str | Path | None = None) -> dict[str, Any]:
    """Run a driver analysis (``fn(cfg)``) as one MLflow run; its files go to ``out_dir`` (default runs/analysis/NAME)."""
    start_tracking(tracking_uri, EXPERIMENT, RUN_ROOT)
    name = cfg.name  # every analysis recipe names its run and result
    return run_recorded(fn, cfg, name.replace("_", "-"), stage, out_dir or RUN_ROOT / name, publish_to)


class ZooAnalyzer(CohortProcessor):
    """One row of the analysis ``cfg`` per model of each cohort it loads."""

    def __init__(self, zoo_dir: str, out_dir: str, cfg: ZooAnalysis):
        super().__init__(zoo_dir, out_dir)
        self.cfg, self.zoo_cfg = cfg, self.store.read_meta()["config"]

    def process(self, spec: ArchSpec, params: dict[str, torch.Tensor], manifest: pd.DataFrame) -> pa.Table:
        return pa.Table.from_pylist(analyze_cohort(self.cfg, spec, params, manifest, self.zoo_cfg))


def analyze_zoo(cfg: ZooAnalysis, zoo_dir: str | Path, tracking_uri: str | None = None, out_dir: str | Path | None = None,
                publish_to: str | Path | None = None, ray_cfg: RayConfig | None = None) -> dict[str, Any]:
    """Run ``cfg`` over every cohort of a zoo with Ray Data; rows go to OUT/rows/*.parquet, the page to OUT.

    OUT defaults to ``<zoo parent>/analysis/<kind>``; the MLflow store to the zoo's parent directory.
    """
    store = ZooStore(zoo_dir)
    cohorts = store.require()
    meta = store.read_meta()
    store.verify()  # a corrupted shard is one line naming it, before Ray starts
    run_dir = Path(out_dir or store.root.parent / "analysis" / cfg.kind)
    init_ray(ray_cfg or RayConfig())
    start_tracking(tracking_uri, EXPERIMENT, store.root.parent)
    t0 = time.perf_counter()
    with start_run(run_name=f"analyze-{cfg.kind}", tags={"zoolens.stage": f"analyze.{cfg.kind}"}):
        mlflow.log_params(as_params({"zoo_dir": store.uri, "n_cohorts": len(cohorts), **cfg.model_dump(mode="json")}))
        map_cohorts(ZooAnalyzer, store.uri, cohorts, run_dir / "rows", cfg.num_actors, cfg=cfg)
        df = pd.read_parquet(run_dir / "rows")
        seconds = time.perf_counter() - t0
        result = zoo_report(cfg, df, meta["config"]["behaviors"], store.root.parent.name or "zoo", seconds)
        return {"kind": cfg.kind, "rows_dir": str(run_dir / "rows"), "n_models": len(df), "seconds": seconds,
                **record(result, run_dir, publish_to)}
