"""The code version recorded with every artifact."""

from __future__ import annotations

import functools
import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


COMMIT_ENV = "ZOOLENS_GIT_COMMIT"  # set by whoever submits a job from a checkout: git rev-parse HEAD (+ ".dirty")


@functools.cache
def code_version() -> str:
    """``<package version>+g<commit>[.dirty]`` from git when available, else from ``ZOOLENS_GIT_COMMIT``, else the package version."""
    try:
        pkg = version("zoolens")
    except PackageNotFoundError:
        pkg = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    given = os.environ.get(COMMIT_ENV, "").strip()
    if given and not (root / ".git").exists():  # a job's working_dir upload leaves .git out; the submitter names the commit
        commit, _, dirty = given.partition(".")
        return f"{pkg}+g{commit[:12]}{'.dirty' if dirty else ''}"
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return pkg
    return f"{pkg}+g{commit}{'.dirty' if dirty else ''}"
