"""What the edit benchmarks share: a run named on the command line as ``CONFIG [KEY=VALUE ...] --output-dir RUN_DIR``
(the overrides the run was made with: the probe set must match its interpreter), and its edit context."""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster.config import PipelineConfig, load_config
from interpreter.editing.context import EditContext, open_context


def run_arguments(ap: argparse.ArgumentParser, models: int) -> None:
    """The config, its overrides, the run directory and how many held-out models to sample."""
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="the overrides the run was made with")
    ap.add_argument("--output-dir", help="run directory (default: the config's output_dir)")
    ap.add_argument("--models", type=int, default=models, help="held-out models (a seeded sample, as edit.max_test_models)")


def open_run(a: argparse.Namespace) -> tuple[PipelineConfig, EditContext, Path]:
    """The run's config (with ``edit.max_test_models`` set to ``--models``), its edit context and its directory."""
    cfg = load_config(a.config, [*a.overrides, f"edit.max_test_models={a.models}"])
    root = Path(a.output_dir or cfg.output_dir)
    return cfg, open_context(root / "zoo", root / "interpreter", cfg.signatures.probes.model_dump()), root
