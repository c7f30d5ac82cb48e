"""Bad input: one line on stderr, exit code 2, no traceback, nothing already written is lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.cli import main

REPO = Path(__file__).resolve().parent.parent


def zoolens(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("zoolens: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0]


def write_config(tmp_path: Path, **zoo) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg["zoo"].update(zoo)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_unknown_behavior(tmp_path: Path):
    proc = zoolens("run", str(write_config(tmp_path, behaviors=["palindrome", "is_prime"])))
    assert_one_line_error(proc, "unknown behavior 'is_prime'")


def test_malformed_yaml(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("zoo:\n  n_models: [1, 2\n  cohort_size: 3\n")
    assert_one_line_error(zoolens("run", str(bad)), "malformed YAML", "bad.yaml")


def test_wrong_type_in_config(tmp_path: Path):
    assert_one_line_error(zoolens("zoo", "build", str(write_config(tmp_path, n_models="many"))), "zoo.n_models")
    too_many_negatives = write_config(tmp_path, hard_negative_frac=0.8, contrast_frac=0.4)
    assert_one_line_error(zoolens("zoo", "build", str(too_many_negatives)), "hard_negative_frac + contrast_frac")


def test_vocabulary_or_length_too_small(tmp_path: Path):
    proc = zoolens("run", str(write_config(tmp_path, vocab=2, behaviors=["contains_abc"], behaviors_per_model=[1, 1])))
    assert_one_line_error(proc, "contains_abc", "vocab")
    proc = zoolens("run", str(write_config(tmp_path, length=2, behaviors=["mountain_pattern"], behaviors_per_model=[1, 1])))
    assert_one_line_error(proc, "mountain_pattern", "length")


def test_missing_config_and_missing_zoo(tmp_path: Path):
    assert_one_line_error(zoolens("run", str(tmp_path / "nope.yaml")), "config not found")
    assert_one_line_error(zoolens("zoo", "show", str(tmp_path / "nozoo")), "zoo not found")


def test_empty_zoo(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(zoolens("zoo", "show", str(tmp_path / "empty")), "no finished cohorts")


def test_other_recipe_in_existing_zoo_is_refused_and_nothing_is_lost(tiny_run: Path, tmp_path: Path, capsys):
    run_dir = tiny_run / "run"
    zoo_files = {p.name: p.read_bytes() for p in (run_dir / "zoo" / "cohorts").iterdir()}
    cfg = write_config(tmp_path, seed=123)
    code = main(["zoo", "build", str(cfg), "--output-dir", str(run_dir), "--tracking-uri",
                 f"sqlite:///{tiny_run / 'mlflow.db'}", "--no-progress"])
    assert code == 2
    assert "different zoo config" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (run_dir / "zoo" / "cohorts").iterdir()} == zoo_files
    assert json.loads((run_dir / "report.json").read_text())["stages"]["interpreter_evaluate"]


@pytest.mark.parametrize("argv", [["--help"], ["zoo", "--help"]])
def test_help(argv):
    proc = zoolens(*argv)
    assert proc.returncode == 0 and "zoolens" in proc.stdout


def test_stage_without_its_inputs_fails_in_one_line(tiny_run: Path, tmp_path: Path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["interpreter", "train", str(REPO / "configs" / "tiny.yaml"), "--output-dir", str(tmp_path / "run"),
                 "--zoo", str(tiny_run / "run" / "zoo"), "--tracking-uri", uri, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("zoolens: error: signatures not found")
