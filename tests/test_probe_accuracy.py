"""The interpreter's accuracy estimate from probe outputs: exact values on hand-made models, its place in the
Interpreter (starts as the estimate, survives save/load), and the probe set read back from signature metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cluster.stages.signatures import SIGNATURE_META, SignatureError, read_probe_set
from interpreter.batch import FeatureScaler, collate
from interpreter.config import InterpreterConfig
from interpreter.model import META_FILE, Interpreter, load_interpreter, save_interpreter
from interpreter.probe_accuracy import ProbeAccuracy, ProbeLayout
from interpreter.targets import head_specs
from zoo.probes import make_probe_set

NAMES = ["all_same", "palindrome", "sorted_ascending"]
PROBES = make_probe_set(NAMES, 5, 6, n_pos=12, n_near=8, n_random=32)
LAYOUT = ProbeLayout.of(PROBES)


def model_outputs(flag_sets: list[list[str]], read_sets: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe logits of models that flag exactly the probes matching their flag set (+-12), and behavior logits
    reading each model's read set (+-20)."""
    cols = lambda s: [NAMES.index(b) for b in s]  # noqa: E731
    flags = np.stack([LAYOUT.matches[:, cols(s)].any(axis=1) for s in flag_sets])
    reads = np.stack([np.isin(np.arange(len(NAMES)), cols(s)) for s in read_sets])
    return torch.from_numpy(np.where(flags, 12.0, -12.0)).float(), torch.from_numpy(np.where(reads, 20.0, -20.0)).float()


def test_groups_on_hand_made_models():
    est = ProbeAccuracy(len(PROBES), len(NAMES), LAYOUT)
    logits, reads = model_outputs(
        [["all_same"], NAMES, [], ["all_same"], ["all_same"]],
        [["all_same"], ["all_same"], ["all_same"], ["all_same", "palindrome"], ["palindrome"]],
    )
    with torch.no_grad():
        g = est.groups(logits, reads).numpy()
        acc = est(logits, reads).numpy()
    # does what it was read to do: right on every group
    np.testing.assert_allclose(g[0], [1, 1, 1, 1], atol=1e-3)
    # flags every behavior's positives: other behaviors' positives (and random probes that match them) go wrong
    assert g[1][0] == pytest.approx(1, abs=1e-3) and g[1][2] == pytest.approx(0, abs=1e-3)
    # flags nothing: every positive missed, every negative right
    np.testing.assert_allclose(g[2], [0, 1, 1, 1], atol=1e-3)
    # read as doing a second behavior it never flags: half the read positives are missed
    assert g[3][0] == pytest.approx(0.5, abs=1e-3)
    # read as the wrong behavior: misses its positives and flags another's
    assert g[4][0] == pytest.approx(0, abs=1e-3) and g[4][2] < 1
    # the mix starts at the zoo recipe: half positives, then near misses, contrasts and randoms
    assert acc[0] == pytest.approx(1, abs=1e-3) and acc[2] == pytest.approx(0.5, abs=1e-3)
    assert acc[3] == pytest.approx(0.75, abs=1e-3)
    assert acc[0] > acc[3] > acc[4] and acc[0] > acc[1]


def test_layout_must_fit():
    with pytest.raises(ValueError, match="does not fit"):
        ProbeAccuracy(len(PROBES) + 1, len(NAMES), LAYOUT)


def records(n: int, rng: np.random.Generator) -> list[dict]:
    """Signature records whose probe logits are those of models flagging a random behavior set."""
    out = []
    for i in range(n):
        flag = [b for b in NAMES if rng.random() < 0.5]
        logits, _ = model_outputs([flag], [flag])
        out.append({"model_id": f"m{i}", "features": rng.normal(size=(6, 5)).astype(np.float32),
                    "layer": np.array([0, 0, 0, 0, 0, 1], np.int16), "rel_depth": np.array([0, 0, 0, 0, 0, 1], np.float32),
                    "kind": np.array([0, 0, 0, 0, 0, 1], np.int8), "logits": logits[0].numpy() + rng.normal(0, 1, len(PROBES))})
    return out


def test_interpreter_starts_at_the_estimate_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    recs = records(8, rng)
    scaler = FeatureScaler.fit(recs, probe_logits=True)
    cfg = InterpreterConfig(d_model=16, n_heads=2, latent_dim=16, probe_accuracy=True)
    model = Interpreter(cfg, scaler.n_features, len(NAMES), head_specs(NAMES), n_probes=len(PROBES), probe_layout=LAYOUT).eval()
    batch = collate(recs, scaler)
    with torch.no_grad():
        out = model(batch)
        estimate = model.probe_accuracy(batch.probe_raw, out["behavior_logits"])
    np.testing.assert_allclose(out["accuracy"].numpy(), estimate.numpy(), atol=1e-5)  # the correction starts at zero

    save_interpreter(model, scaler, NAMES, tmp_path)
    assert json.loads((tmp_path / META_FILE).read_text())["probe_accuracy"] is True
    loaded = load_interpreter(tmp_path)
    assert torch.equal(loaded.model.probe_accuracy.matches, model.probe_accuracy.matches)
    with torch.no_grad():
        again = loaded.model(collate(recs, loaded.scaler))
    np.testing.assert_allclose(again["accuracy"].numpy(), out["accuracy"].numpy(), atol=1e-6)

    off = Interpreter(cfg, scaler.n_features, len(NAMES), head_specs(NAMES), n_probes=len(PROBES))
    assert off.probe_accuracy is None  # no layout: the accuracy head reads the latent alone


def test_probe_set_read_back_from_signature_meta(tmp_path):
    meta = {"probe_sha256": PROBES.sha256, "probe_version": PROBES.version, "behaviors": list(PROBES.behaviors),
            "vocab": PROBES.vocab, "length": PROBES.length, "probe_tokens": PROBES.tokens.tolist(),
            "probe_behavior": PROBES.behavior.tolist(), "probe_is_positive": PROBES.is_positive.tolist()}
    (tmp_path / SIGNATURE_META).write_text(json.dumps(meta))
    assert read_probe_set(tmp_path).sha256 == PROBES.sha256

    meta["probe_tokens"][0][0] = (meta["probe_tokens"][0][0] + 1) % PROBES.vocab
    (tmp_path / SIGNATURE_META).write_text(json.dumps(meta))
    with pytest.raises(SignatureError, match="does not match its hash"):
        read_probe_set(tmp_path)
    del meta["probe_tokens"]
    (tmp_path / SIGNATURE_META).write_text(json.dumps(meta))
    with pytest.raises(SignatureError, match="probe_tokens missing"):
        read_probe_set(tmp_path)
