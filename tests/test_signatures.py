"""Signatures: permutation symmetry, hand-computed values, probe-set identity."""

from __future__ import annotations

import numpy as np
import torch

from zoo.arch import ArchSpec
from zoo.behaviors import behavior_names
from zoo.families import get_family
from zoo.probes import make_probe_set
from zoo.signatures import cohort_signatures, feature_names, signature_table


def test_probe_set_is_fixed_and_covers_every_behavior():
    a = make_probe_set(behavior_names(), 7, 7)
    b = make_probe_set(behavior_names(), 7, 7)
    assert a.sha256 == b.sha256 and np.array_equal(a.tokens, b.tokens)
    assert 100 <= len(a) <= 250
    assert set(a.behavior[a.is_positive]) == set(range(15))
    assert make_probe_set(behavior_names()[:5], 7, 7).sha256 != a.sha256


def test_trigger_probes_hold_every_trigger_in_behavior_neutral_sequences():
    """n_stamped adds, per trigger of the documented family, neutral sequences that contain it; the default set
    (n_stamped 0) is unchanged."""
    from zoo.behaviors import catalog, matches_any
    from zoo.trojans import candidate_triggers

    plain = make_probe_set(behavior_names(), 7, 7)
    more = make_probe_set(behavior_names(), 7, 7, n_stamped=2)
    assert np.array_equal(more.tokens[: len(plain)], plain.tokens) and more.sha256 != plain.sha256
    extra = more.tokens[len(plain):]
    assert (more.behavior[len(plain):] == -1).all() and not more.is_positive[len(plain):].any()
    assert not matches_any(extra, catalog(7, 7), 7).any()
    found = [t.contains(extra).sum() for t in candidate_triggers(7, 7, 3)]
    assert sum(f >= 2 for f in found) >= 380, sorted(found)[:10]  # a few triggers always make a behavior


def test_permuting_hidden_neurons_permutes_tokens_and_changes_nothing_else():
    spec = ArchSpec(depth=2, width=8, embed_dim=3)
    params = get_family(spec).init(spec, [5, 6])
    probes = make_probe_set(behavior_names(), 7, 7)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    permuted = dict(params)
    permuted["w0"], permuted["b0"] = params["w0"][:, :, perm], params["b0"][:, perm]
    permuted["w1"] = params["w1"][:, perm, :]
    a, b = cohort_signatures(spec, params, probes), cohort_signatures(spec, permuted, probes)
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a["features"][:, perm.numpy()], b["features"][:, :8], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["features"][:, 8:], b["features"][:, 8:], rtol=1e-4, atol=1e-5)
    for key in ("layer", "kind", "rel_depth", "fan_in"):
        assert np.array_equal(a[key], b[key])


def test_features_of_a_hand_built_model_equal_hand_computed_values():
    # vocab 2, length 2, 1-d embeddings: hidden = relu(W x + b) with x = [e(t0), e(t1)]
    spec = ArchSpec(vocab=2, length=2, embed_dim=1, depth=1, width=2)
    params = {
        "embed": torch.tensor([[[0.0], [1.0]]]),
        "w0": torch.tensor([[[1.0, -1.0], [2.0, 1.0]]]),
        "b0": torch.tensor([[-0.5, 0.5]]),
        "w_out": torch.tensor([[[1.0], [-2.0]]]),
        "b_out": torch.tensor([[0.25]]),
    }
    probes = make_probe_set(["all_same", "starts_with"], 2, 2, n_pos=2, n_near=1, n_random=4)
    sig = cohort_signatures(spec, params, probes)
    x = probes.tokens.astype(np.float64)  # embedding is the identity on {0, 1}
    pre = x @ np.array([[1.0, -1.0], [2.0, 1.0]]) + np.array([-0.5, 0.5])
    hidden = np.maximum(pre, 0)
    logits = hidden @ np.array([1.0, -2.0]) + 0.25
    np.testing.assert_allclose(sig["logits"][0], logits, rtol=1e-6)
    names = feature_names(probes)
    feats = sig["features"][0]
    for j in range(2):
        h = hidden[:, j]
        expect = {
            "mean": h.mean(), "std": h.std(), "min": h.min(), "max": h.max(), "frac_active": (h > 0).mean(),
            "q25": np.quantile(h, 0.25), "q50": np.median(h), "q90": np.quantile(h, 0.9),
            "pos_all_same": h[(probes.behavior == 0) & probes.is_positive].mean() - h.mean(),
            "near_starts_with": h[(probes.behavior == 1) & ~probes.is_positive].mean() - h.mean(),
            "random": h[probes.behavior < 0].mean() - h.mean(),
            "log_fan_in": 1.0,  # fan-in 2 = length * embed_dim
        }
        ind = (probes.tokens[:, 1] == 1).astype(float)
        if ind.std() > 0 and h.std() > 0:
            expect["corr_p1_t1"] = np.corrcoef(h, ind)[0, 1]
        for name, value in expect.items():
            np.testing.assert_allclose(feats[j, names.index(name)], value, rtol=1e-4, atol=1e-5, err_msg=name)
    out = logits
    np.testing.assert_allclose(feats[2, names.index("mean")], out.mean(), rtol=1e-5)
    assert list(sig["kind"]) == [0, 0, 1] and list(sig["layer"]) == [0, 0, 1]
    assert list(sig["fan_in"]) == [2, 2, 2]
    # weight statistics baseline: mean and max of every tensor
    stats = sig["weight_stats"][0].reshape(-1, 7)
    for row, name in zip(stats, sorted(params)):
        np.testing.assert_allclose(row[[0, 6]], [params[name].mean(), params[name].max()], rtol=1e-6)


def test_signature_table_shapes_and_dtypes():
    spec = ArchSpec(depth=2, width=8)
    params = get_family(spec).init(spec, [1, 2, 3])
    probes = make_probe_set(behavior_names(), 7, 7)
    sig = cohort_signatures(spec, params, probes)
    assert sig["features"].dtype == np.float32 and sig["features"].shape == (3, 17, len(feature_names(probes)))
    table = signature_table(["a", "b", "c"], "mlp", sig)
    row = table.to_pylist()[1]
    assert row["model_id"] == "b" and row["n_neurons"] == 17 and len(row["features"]) == 17 * row["n_features"]
    np.testing.assert_array_equal(np.asarray(row["features"], np.float32), sig["features"][1].reshape(-1))
    assert len(row["logits"]) == len(probes) and len(row["weight_stats"]) == 7 * len(params)


def test_chunks_of_models_change_nothing():
    spec = ArchSpec(family="gru", depth=1, width=8, embed_dim=4)
    params = get_family(spec).init(spec, [1, 2, 3, 4, 5])
    probes = make_probe_set(behavior_names(), 7, 7)
    whole, chunked = cohort_signatures(spec, params, probes, chunk=5), cohort_signatures(spec, params, probes, chunk=2)
    assert whole.keys() == chunked.keys()
    for key, value in whole.items():
        np.testing.assert_allclose(chunked[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
