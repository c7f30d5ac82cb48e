"""The behavior read-out from each behavior's probe outputs: exact statistics on hand-made logits, a read-out that
learns to tell a half-flagged behavior from an absent one, its place in the Interpreter (zero at start, save/load)
and in training (fit first, then frozen)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interpreter.batch import FeatureScaler, collate
from interpreter.config import InterpreterConfig
from interpreter.model import META_FILE, Interpreter, load_interpreter, save_interpreter
from interpreter.probe_accuracy import ProbeLayout, group_masks
from interpreter.probe_profile import CLIP, CUTS, N_STATS, ProbeProfile
from interpreter.targets import head_specs
from interpreter.train import predict, train_interpreter
from zoo.probes import make_probe_set

NAMES = ["all_same", "palindrome", "sorted_ascending"]
PROBES = make_probe_set(NAMES, 5, 6, n_pos=12, n_near=8, n_random=32)
LAYOUT = ProbeLayout.of(PROBES)
OWN_POSITIVE, OWN_NEAR, RANDOM = (m.bool().numpy() for m in group_masks(LAYOUT))


def test_stats_on_hand_made_logits():
    raw = np.full((1, len(PROBES)), -20.0, np.float32)  # rejects everything by far (clipped to -CLIP)
    raw[0, OWN_POSITIVE[:, 0]] = 1.5  # all_same's positives: just over the boundary
    raw[0, OWN_NEAR[:, 0]] = -3.0
    raw[0, RANDOM] = np.where(np.arange(RANDOM.sum()) % 4 == 0, 5.0, -5.0)  # a quarter of the random probes flagged
    with torch.no_grad():
        s = ProbeProfile(len(PROBES), len(NAMES), LAYOUT).stats(torch.from_numpy(raw))[0].numpy()
    assert s.shape == (len(NAMES), N_STATS)
    cdf = len(CUTS)
    positives, near, rand = s[0, :2 + cdf], s[0, 2 + cdf:4 + 2 * cdf], s[0, -2:]
    assert positives[0] == pytest.approx(1.5 / CLIP) and positives[1] == pytest.approx(0, abs=1e-3)
    np.testing.assert_allclose(positives[2:], [1.5 > c for c in CUTS])
    assert near[0] == pytest.approx(-3 / CLIP) and near[1] == pytest.approx(0, abs=1e-3)
    np.testing.assert_allclose(near[2:], [-3 > c for c in CUTS])
    assert rand[1] == pytest.approx(np.mean(np.arange(RANDOM.sum()) % 4 == 0))
    assert s[1, 0] == pytest.approx(-1) and s[1, 2:2 + cdf].sum() == 0  # palindrome's positives: rejected, clipped
    np.testing.assert_allclose(s[:, -2:], np.broadcast_to(rand, (len(NAMES), 2)))  # the random probes are per model


def test_learns_a_half_flagged_behavior_from_an_absent_one():
    """Present-but-corrupted behaviors leave their positives near the boundary; absent ones reject them by far.
    Both flag the same share of them, so the share flagged alone cannot tell them apart."""
    gen = torch.Generator().manual_seed(0)
    n = 256
    present = torch.rand(n, len(NAMES), generator=gen) < 0.5
    raw = torch.randn(n, len(PROBES), generator=gen) - 8.0
    pos = torch.from_numpy(OWN_POSITIVE).T  # [K, P]
    for k in range(len(NAMES)):
        flagged = torch.rand(n, len(PROBES), generator=gen) < 0.2
        near_zero = torch.randn(n, len(PROBES), generator=gen) * 0.5 - 1.0
        value = torch.where(flagged, torch.full_like(raw, 8.0), torch.where(present[:, k:k + 1], near_zero, raw))
        raw = torch.where(pos[k], value, raw)
    torch.manual_seed(0)
    module = ProbeProfile(len(PROBES), len(NAMES), LAYOUT)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    train, test = slice(0, 192), slice(192, None)
    for _ in range(150):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(module(raw[train]), present[train].float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        read = module(raw[test]) > 0
    assert (read == present[test]).float().mean() > 0.95


def test_interpreter_starts_unchanged_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    recs = [{"model_id": f"m{i}", "features": rng.normal(size=(6, 5)).astype(np.float32),
             "layer": np.array([0, 0, 0, 0, 0, 1], np.int16), "rel_depth": np.array([0, 0, 0, 0, 0, 1], np.float32),
             "kind": np.array([0, 0, 0, 0, 0, 1], np.int8), "logits": rng.normal(0, 4, len(PROBES)).astype(np.float32)}
            for i in range(8)]
    scaler = FeatureScaler.fit(recs, probe_logits=True)
    base = InterpreterConfig(d_model=16, n_heads=2, latent_dim=16)
    batch = collate(recs, scaler)
    torch.manual_seed(0)
    off = Interpreter(base, scaler.n_features, len(NAMES), head_specs(NAMES), n_probes=len(PROBES), probe_layout=LAYOUT).eval()
    torch.manual_seed(0)
    cfg = base.model_copy(update={"probe_profile": True})
    model = Interpreter(cfg, scaler.n_features, len(NAMES), head_specs(NAMES), n_probes=len(PROBES), probe_layout=LAYOUT).eval()
    assert off.probe_profile is None and model.probe_profile is not None
    model.load_state_dict(off.state_dict(), strict=False)  # the same encoder and heads; the profile starts at zero
    with torch.no_grad():
        np.testing.assert_allclose(model(batch)["behavior_logits"].numpy(), off(batch)["behavior_logits"].numpy(), atol=1e-6)
        torch.nn.init.normal_(model.probe_profile.mlp[-1].weight)  # make it say something
        out = model(batch)["behavior_logits"]

    save_interpreter(model, scaler, NAMES, tmp_path)
    assert json.loads((tmp_path / META_FILE).read_text())["probe_profile"] is True
    loaded = load_interpreter(tmp_path).model
    assert torch.equal(loaded.probe_profile.own_positive, model.probe_profile.own_positive)
    assert loaded.probe_accuracy is None  # the layout came for the profile only
    with torch.no_grad():
        np.testing.assert_allclose(loaded(batch)["behavior_logits"].numpy(), out.numpy(), atol=1e-6)


def synthetic_records(n: int, rng: np.random.Generator) -> tuple[list[dict], np.ndarray]:
    """Models whose neurons say nothing and whose outputs flag their behaviors' probes; a third of the behaviors
    are 'corrupted': most of their positives sit just under the boundary instead of above it."""
    present = rng.random((n, len(NAMES))) < 0.4
    present[~present.any(1), 0] = True
    recs = []
    for i in range(n):
        match = LAYOUT.matches[:, present[i]].any(axis=1)
        logits = np.where(match, 6.0, -6.0) + rng.normal(0, 1, len(PROBES))
        for k in np.flatnonzero(present[i]):
            if rng.random() < 1 / 3:
                own = OWN_POSITIVE[:, k] & (rng.random(len(PROBES)) < 0.7)
                logits[own] = rng.normal(-1.0, 0.5, own.sum())
        recs.append({"model_id": f"m{i}", "features": rng.normal(size=(6, 5)).astype(np.float32),
                     "layer": np.array([0, 0, 0, 0, 0, 1], np.int16), "rel_depth": np.array([0, 0, 0, 0, 0, 1], np.float32),
                     "kind": np.array([0, 0, 0, 0, 0, 1], np.int8), "logits": logits.astype(np.float32)})
    return recs, present.astype(np.float32)


def test_training_fits_the_profile_first_and_freezes_it():
    rng = np.random.default_rng(1)
    recs, y = synthetic_records(240, rng)
    targets = {"behaviors": y, "accuracy": rng.uniform(0.6, 1.0, len(y)).astype(np.float32)}
    cfg = InterpreterConfig(d_model=16, n_heads=2, latent_dim=16, n_layers=1, epochs=4, probe_profile=True,
                            probe_accuracy=True)
    result = train_interpreter(recs[:180], {k: v[:180] for k, v in targets.items()}, cfg, NAMES,
                               specs=head_specs(NAMES)[:2], probe_layout=LAYOUT)
    model, profile, estimate = result.model, result.model.probe_profile, result.model.probe_accuracy
    assert profile is not None and not any(p.requires_grad for p in profile.parameters())
    test = collate(recs[180:], result.scaler)
    with torch.no_grad():
        alone = profile(test.probe_raw)
        out = model(test)
        # the accuracy estimate scores under the profile's reading, at the sharpness it started with
        correction = model.heads["accuracy"](out["latent"]).squeeze(-1)
        expected = torch.sigmoid(correction + torch.logit(estimate(test.probe_raw, alone).clamp(1e-4, 1 - 1e-4)))
    np.testing.assert_allclose(out["accuracy"].numpy(), expected.numpy(), atol=1e-5)
    assert estimate.log_sharpness.exp().item() == pytest.approx(3.0)
    assert ((alone.numpy() > 0) == (y[180:] > 0.5)).all(axis=1).mean() > 0.9  # the fitted profile reads the sets alone
    read = predict(model, result.scaler, recs[180:])["behaviors"] > 0.5
    assert (read == (y[180:] > 0.5)).all(axis=1).mean() > 0.9
