"""``zoolens read`` over its three sources (a zoo model, a user's class file, a HookedTransformer), the registry, and
every bad input: one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cluster.cli import main
from interpreter.batch import FeatureScaler
from interpreter.config import InterpreterConfig
from interpreter.model import Interpreter, save_interpreter
from interpreter.probe_accuracy import ProbeLayout
from interpreter.targets import head_specs
from zoo.arch import ArchSpec
from zoo.families import get_family
from zoo.probes import make_probe_set
from zoo.signatures import feature_names
from zoo.store import ZooStore, atomic_write_json, model_sha256

from cluster.stages.signatures import probe_set_record

BEHAVIORS = ("all_same", "palindrome", "sorted_ascending", "contains_abc")

NET = """import torch
from torch import nn
class Net(nn.Module):
    def __init__(self, width=6, vocab=7):
        super().__init__()
        self.e = nn.Embedding(vocab, 3); self.f = nn.Linear(21, width); self.a = nn.ReLU(); self.o = nn.Linear(width, 1)
    def forward(self, x):
        return self.o(self.a(self.f(self.e(x).flatten(1))))
class Wide(Net):
    def forward(self, x):
        return super().forward(x).repeat(1, 3)
class Bad(Net):
    def forward(self, x):
        return super().forward(x) * float('nan')
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory: a small zoo, the probe set its signatures were read through, and an interpreter (untrained;
    its thresholds make it flag the first behavior alone, so the carrier search runs once)."""
    root = tmp_path_factory.mktemp("read")
    probes = make_probe_set(BEHAVIORS, 7, 7)
    atomic_write_json(root / "signatures" / "_signatures.json", probe_set_record(probes))
    n_raw = len(feature_names(probes))
    cfg = InterpreterConfig(d_model=16, n_layers=1, n_heads=2, latent_dim=8, probe_accuracy=True, probe_profile=True)
    torch.manual_seed(0)
    model = Interpreter(cfg, 2 * n_raw, len(BEHAVIORS), head_specs(list(BEHAVIORS)), n_probes=len(probes),
                        probe_layout=ProbeLayout.of(probes))
    model.thresholds = np.array([0.0] + [2.0] * (len(BEHAVIORS) - 1), dtype=np.float32)
    scaler = FeatureScaler(np.zeros(2 * n_raw), np.ones(2 * n_raw), shape_channel=True,
                           logit_mean=np.zeros(len(probes)), logit_std=np.ones(len(probes)))
    save_interpreter(model, scaler, list(BEHAVIORS), root / "interpreter")
    spec = ArchSpec(family="mlp", depth=1, width=8, embed_dim=4)
    params = get_family(spec).init(spec, [1, 2])
    store = ZooStore(root / "zoo")
    store.write_meta({"config": {"behaviors": list(BEHAVIORS), "vocab": 7, "length": 7}})
    store.write_cohort("c00000", spec, params, [{"model_id": f"m{i}", "cohort_id": "c00000", "sha256": model_sha256(params, i)}
                                               for i in range(2)])
    (root / "net.py").write_text(NET)
    ns: dict = {}
    exec(compile(NET, "net.py", "exec"), ns)  # noqa: S102 - the test's own source
    save_file(ns["Net"]().state_dict(), str(root / "net.safetensors"))
    return root


def _read(args: list[str], capsys) -> tuple[int, str]:
    code = main(["read", *args])
    return code, capsys.readouterr().err.strip()


def _check_outputs(out: Path, n_behaviors: int = len(BEHAVIORS)) -> dict:
    data = json.loads((out / "read.json").read_text())
    assert (out / "carrier_map.png").stat().st_size > 1000
    assert len(data["behaviors"]) == n_behaviors and data["flagged"] == [BEHAVIORS[0]]
    assert 0.0 <= data["accuracy"] <= 1.0 and 0.0 <= data["corrupted"] <= 1.0
    for b in data["flagged"]:
        c = data["carriers"][b]
        assert len(c["neurons"]) == 1 and isinstance(c["confirmed"], bool) and "drop_random" in c
    assert data["carrier_map"]["behaviors"] == [BEHAVIORS[0]]
    return data


def test_read_a_zoo_model(run_dir, tmp_path, capsys):
    code, err = _read(["m1", str(run_dir), "-k", "1", "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 0, err
    data = _check_outputs(tmp_path / "o")
    assert data["architecture"]["family"]["meaningful"] and data["architecture"]["known"]["family"] == "mlp"


def test_read_a_class_file_and_log_to_mlflow(run_dir, tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, err = _read([f"{run_dir / 'net.py'}:Net", str(run_dir / "interpreter"), "--weights", str(run_dir / "net.safetensors"),
                       "--args", "{width: 6}", "-k", "1", "--output-dir", str(tmp_path / "o"), "--tracking-uri", uri], capsys)
    assert code == 0, err
    data = _check_outputs(tmp_path / "o")
    assert not data["architecture"]["family"]["meaningful"]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["zoolens-read"])
    assert len(runs) == 1 and "metrics.accuracy" in runs.columns


def test_read_a_hooked_transformer(run_dir, tmp_path, capsys):
    pytest.importorskip("transformer_lens")
    from zoo.adapters.sources import hooked_transformer
    from zoo.foreign.architectures import transformer_config

    cfg = transformer_config(d_model=4, n_heads=2)
    (tmp_path / "tl.yaml").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in hooked_transformer(cfg).state_dict().items()}, str(tmp_path / "tl.safetensors"))
    code, err = _read([f"hooked_transformer:{tmp_path / 'tl.yaml'}", str(run_dir), "--weights", str(tmp_path / "tl.safetensors"),
                       "-k", "1", "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 0, err
    data = _check_outputs(tmp_path / "o")
    assert all(n.startswith("blocks.") for n in data["carrier_map"]["neurons"])


@pytest.mark.parametrize("case,needle", [
    ("Wide:{width: 6}", "output shape [2, 3] for 2 sequences"),
    ("Bad:{width: 6}", "NaN"),
    ("Net:{width: 6, vocab: 9}", "vocabulary 9"),
    ("Net:{width: 6, length: 5}", "length 5"),
    ("Net:{width: 4}", "do not match Net"),
    ("Nope:{}", "no torch.nn.Module subclass"),
    ("missing:{}", "file not found"),
    ("pickle:{}", "not a safetensors file"),
])
def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys, case, needle):
    cls, args = case.split(":", 1)
    weights = run_dir / "net.safetensors"
    model = f"{run_dir / 'net.py'}:{cls}"
    if cls == "missing":
        model = f"{tmp_path / 'none.py'}:Net"
    if cls == "pickle":
        weights = tmp_path / "w.pt"
        weights.write_bytes(b"\x80\x04\x95 a pickle, not safetensors")
        model = f"{run_dir / 'net.py'}:Net"
    code, err = _read([model, str(run_dir), "--weights", str(weights), "--args", args, "--no-carriers",
                       "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_unimportable_class_and_unknown_interpreter(run_dir, tmp_path, capsys):
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    code, err = _read([f"{tmp_path / 'broken.py'}:Net", str(run_dir), "--weights", str(run_dir / "net.safetensors")], capsys)
    assert code == 2 and "cannot import" in err and "boom at import" in err and len(err.splitlines()) == 1
    code, err = _read(["m1", str(tmp_path)], capsys)
    assert code == 2 and "no interpreter" in err


def test_read_from_the_registry(tiny_run: Path, tmp_path, capsys):
    """The tiny pipeline's registered champion, read through its logged config's probe set."""
    import pandas as pd

    run = tiny_run / "run"
    uri = f"sqlite:///{tiny_run / 'mlflow.db'}"
    model_id = str(pd.read_parquet(sorted((run / "zoo" / "cohorts").glob("*.parquet"))[0])["model_id"].iloc[0])
    code, err = _read([model_id, "models:/zoolens-interpreter@champion", "--zoo", str(run / "zoo"), "--tracking-uri", uri,
                       "-k", "1", "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "o" / "read.json").read_text())
    assert len(data["behaviors"]) == 4 and data["architecture"]["family"]["class"] == "mlp"


def test_read_a_foreign_zoo_model(run_dir, tmp_path, capsys):
    """A model of a foreign zoo (``zoolens zoo foreign``'s store) is read by id like a zoo model."""
    from zoo.foreign.architectures import ResMLP
    from zoo.foreign.store import ForeignStore

    store = ForeignStore(tmp_path / "foreign")
    store.write_meta({"config": {"vocab": 7, "length": 7, "behaviors": list(BEHAVIORS)}})
    args = {"vocab": 7, "length": 7, "embed_dim": 2, "width": 6, "hidden": 8, "blocks": 1}
    torch.manual_seed(0)
    store.write_model("fre00000", "resmlp", args, ResMLP(**args))
    store.write_chunk("resmlp-0000", [{"model_id": "fre00000", "arch": "resmlp", "behaviors": ["palindrome"]}])
    code, err = _read(["fre00000", str(run_dir), "--zoo", str(tmp_path / "foreign"), "-k", "1",
                       "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 0, err
    data = _check_outputs(tmp_path / "o")
    assert data["architecture"]["known"]["arch"] == "resmlp" and data["carrier_map"]["neurons"][0] == "blocks.0.act[0]"
