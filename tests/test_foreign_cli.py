"""A foreign zoo (``zoolens zoo foreign``) through ``zoo show``, ``signatures extract`` and ``edit``, end to end
through the CLI on a tiny foreign zoo built once (real Ray, real torch, real MLflow), and each bad input: one line,
exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from cluster.cli import main
from cluster.stages.signatures import read_probe_set, read_signatures
from zoo.foreign.store import ForeignStore
from zoo.foreign.train import ForeignZooConfig
from zoo.probes import make_probe_set

from test_read import run_dir  # noqa: F401 - the fixture: a run directory with a small untrained interpreter

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "tiny.yaml")
BEHAVIORS = ["all_same", "palindrome", "sorted_ascending", "contains_abc"]  # tiny.yaml's, at its vocabulary and length
RECIPE = {"name": "foreign-test", "n_per_arch": 2, "architectures": ["lstm", "cnn", "resmlp"], "behaviors": BEHAVIORS,
          "behaviors_per_model": [1, 2], "n_train": 64, "n_test": 32, "epochs": 1, "batch_size": 32,
          "probes": {"n_pos": 3, "n_near": 2, "n_random": 10}}  # its own signatures: another probe set than tiny.yaml's
FAST_EDIT = ["edit.guided_steps=20", "edit.guided_rounds=1", "edit.editor.bank_per_behavior=256"]


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, ray_local, single_thread) -> Path:
    """Six foreign models (two each of LSTM, CNN, residual MLP), built by ``zoolens zoo foreign``."""
    root = tmp_path_factory.mktemp("foreign")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    assert main(["zoo", "foreign", str(root / "recipe.yaml"), "--output-dir", str(root / "zoo")]) == 0
    return root / "zoo"


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def _one_line_error(args: list[str], capsys, *needles: str) -> None:
    code, _, err = _run(args, capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_zoo_show_describes_a_foreign_zoo(foreign, capsys):
    code, out, err = _run(["zoo", "show", str(foreign)], capsys)
    assert code == 0, err
    assert "foreign zoo" in out and "6 of 6 planned models in 3 chunks" in out and "MB on disk" in out
    for arch in ("lstm", "cnn", "resmlp"):
        assert arch in out
    for _, g in ForeignStore(foreign).read_manifest().groupby("arch"):
        assert f"{g['test_acc'].mean():.3f}" in out  # mean held-out accuracy from the manifest
    assert "by behavior" in out and "by role: normal 6" in out
    assert (foreign / "accuracy_histogram.png").stat().st_size > 1000


def test_signatures_extract_reads_a_foreign_zoo_through_the_config_probe_set(foreign, tmp_path, capsys):
    run = tmp_path / "run"
    cmd = ["signatures", "extract", TINY, "--output-dir", str(run), "--zoo", str(foreign),
           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-progress"]
    code, _, err = _run(cmd, capsys)
    assert code == 0, err
    sig = run / "signatures"
    probes = make_probe_set(BEHAVIORS, 7, 7)  # the tiny config's probe set, not the foreign zoo's own
    assert read_probe_set(sig).sha256 == probes.sha256 != ForeignZooConfig(**RECIPE).probe_set().sha256
    records = read_signatures(sig)
    assert [r["model_id"] for r in records] == sorted(ForeignStore(foreign).read_manifest()["model_id"])
    assert len(records[0]["logits"]) == len(probes)
    parts = sorted(sig.glob("part-*.parquet"))
    assert [p.stem for p in parts] == ["part-cnn-0000", "part-lstm-0000", "part-resmlp-0000"]
    stamps = {p: p.stat().st_mtime_ns for p in parts}

    parts[0].unlink()  # an interrupted run: one chunk never written
    assert main(cmd) == 0
    summary = json.loads((run / "stages" / "signatures.json").read_text())
    assert summary["chunks_read"] == 1 and summary["chunks_skipped"] == 2
    assert all(p.stat().st_mtime_ns == stamps[p] for p in parts[1:]) and parts[0].exists()

    assert main([*cmd[:3], "signatures.probes.n_random=8", *cmd[3:]]) == 0  # another probe set: every part again
    summary = json.loads((run / "stages" / "signatures.json").read_text())
    assert summary["chunks_read"] == 3 and summary["probe_sha256"] != probes.sha256
    assert len(read_signatures(sig)) == 6


def test_signatures_of_a_foreign_zoo_that_does_not_fit_the_config(foreign, tmp_path, capsys):
    for override, needle in (("zoo.vocab=8", "vocabulary 7 and length 7"), ("zoo.length=6", "length 6")):
        _one_line_error(["signatures", "extract", TINY, override, "--output-dir", str(tmp_path / "run"),
                         "--zoo", str(foreign)], capsys, needle, "probe set")
    _one_line_error(["interpreter", "train", TINY, "--output-dir", str(tmp_path / "run"), "--zoo", str(foreign)],
                    capsys, "foreign zoo", "signatures extract")
    assert not (tmp_path / "run").exists()


def test_edit_a_foreign_model_then_read_it(foreign, run_dir, tmp_path, capsys):  # noqa: F811 - the fixture
    store = ForeignStore(foreign)
    has = list(store.read_manifest().set_index("model_id").loc["fcn00000", "behaviors"])
    add = next(b for b in BEHAVIORS if b not in has)
    run = tmp_path / "run"
    code, out, err = _run(["edit", "fcn00000", TINY, *FAST_EDIT, "--zoo", str(foreign), "--add", add,
                           "--output-dir", str(run), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], capsys)
    assert code == 0, err
    new_id = f"fcn00000.add-{add}"
    assert f"fcn00000 (cnn): add {add} by guided" in out and "823,543 sequences" in out and new_id in out
    report = json.loads((run / "edits" / new_id / "edit.json").read_text())
    assert report["judged_on"] == "input_space" and report["judged_sequences"] == 7 ** 7
    assert report["kept"] == sorted(has) and isinstance(report["success"], bool)
    assert set(report["before"]) == {*has, add, "false_positive_rate"} and report["settings"]["steps"] == 20
    assert report["after"][add] > report["before"][add]
    weights = run / "edits" / "models" / f"{new_id}.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        assert f.metadata()["arch"] == "cnn" and json.loads(f.metadata()["args"])["vocab"] == 7
    edits = ForeignStore(run / "edits")
    arch, _, module = edits.load_module(new_id)
    assert arch == "cnn" and module is not None
    row = edits.read_manifest().iloc[0]
    assert row["parent_id"] == "fcn00000" and sorted(row["behaviors"]) == sorted([*has, add])

    code, _, err = _run(["read", new_id, str(run_dir), "--zoo", str(run / "edits"), "--no-carriers",
                         "--output-dir", str(tmp_path / "read")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "read" / "read.json").read_text())["architecture"]["known"]["arch"] == "cnn"


def test_bad_foreign_edits_are_one_line(foreign, tmp_path, capsys):
    has = list(ForeignStore(foreign).read_manifest().set_index("model_id").loc["fre00000", "behaviors"])
    lacks = next(b for b in BEHAVIORS if b not in has)
    base = ["edit", "fre00000", TINY, "--zoo", str(foreign), "--output-dir", str(tmp_path / "run")]
    _one_line_error(["edit", "fzz00009", TINY, "--zoo", str(foreign), "--add", lacks], capsys, "fzz00009", "not in the zoo")
    _one_line_error([*base, "--add", "not_a_behavior"], capsys, "not_a_behavior")
    _one_line_error([*base, "--add", "no_repeats"], capsys, "not one of this zoo's behaviors")
    _one_line_error([*base, "--add", has[0]], capsys, "already flags", "--force")
    _one_line_error([*base, "--remove", lacks], capsys, "does not flag", "--force")
    _one_line_error([*base, "--repair"], capsys, "--repair is not available for foreign models")
    _one_line_error([*base, "--remove", has[0], "--method", "decoder"], capsys, "--method decoder is not available")
    _one_line_error([*base, "--add", lacks, "--method", "onepass"], capsys, "--method onepass is not available")
    assert not (tmp_path / "run").exists()


def test_zoo_show_of_a_foreign_zoo_missing_weights(foreign, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(foreign, broken, ignore=shutil.ignore_patterns("signatures"))
    (broken / "models" / "fls00001.safetensors").unlink()
    _one_line_error(["zoo", "show", str(broken)], capsys, "no weights file", "fls00001")
