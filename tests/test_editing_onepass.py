"""The one-pass editor: permutation equivariance in every family, training on a tiny pool, an edit that runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from interpreter.editing.editor import Encoded, Pool
from interpreter.editing.neurons import neuron_axes
from interpreter.editing.onepass import (OnePassConfig, OnePassEditor, edit_gradient, load_onepass, onepass_edit,
                                         save_onepass, train_onepass)
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.data import make_cohort_data
from zoo.families import get_family, neuron_points
from zoo.train import train_cohort

NAMES = ["all_same", "palindrome", "starts_with", "contains_abc"]
SPECS = [ArchSpec(family="mlp", depth=2, width=6, embed_dim=8), ArchSpec(family="gru", depth=2, width=6, embed_dim=8),
         ArchSpec(family="attention", depth=1, width=8, embed_dim=8), ArchSpec(family="conv1d", depth=2, width=6, embed_dim=8)]


def _permute(spec: ArchSpec, params: dict, point: str, perm: torch.Tensor) -> dict:
    """Reorder the neurons of one hook point in every tensor that indexes them (gate-stacked or channel-major)."""
    out = {}
    for k, v in params.items():
        for axis, p in neuron_axes(spec).get(k, []):
            if p != point:
                continue
            n, reps = len(perm), v.shape[axis] // len(perm)
            if spec.family == "conv1d" and axis == 1:  # channel-major rows: (channel, tap)
                idx = (perm.view(-1, 1) * reps + torch.arange(reps).view(1, -1)).flatten()
            else:  # gate-stacked: (gate, neuron)
                idx = (torch.arange(reps).view(-1, 1) * n + perm.view(1, -1)).flatten()
            v = v.index_select(axis, idx)
        out[k] = v
    return out


def _encoded(spec: ArchSpec, m: int, d_token: int = 12, latent_dim: int = 5, seed: int = 0) -> Encoded:
    """A reading with one token per hook-point unit (random: the editor's symmetry does not depend on its values)."""
    n = sum(p.n_neurons for p in get_family(spec).hook_points(spec))
    gen = torch.Generator().manual_seed(seed)
    return Encoded(torch.randn(m, n, d_token, generator=gen), torch.randn(m, latent_dim, generator=gen),
                   torch.rand(m, len(NAMES), generator=gen), torch.rand(m, len(NAMES), generator=gen))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.family)
def test_onepass_editor_is_permutation_equivariant(spec: ArchSpec) -> None:
    """Reordering a layer's neurons (weights and tokens) reorders the gradient and the change the same way."""
    torch.manual_seed(0)
    params = get_family(spec).init(spec, [1, 2])
    enc = _encoded(spec, 2)
    editor = OnePassEditor(OnePassConfig(d_hidden=16), NAMES, 12, 5)
    for p in editor.parameters():  # away from the zero start, so the gain network matters
        torch.nn.init.normal_(p, std=0.3)
    editor.eval()
    bank = BehaviorBank.build(NAMES, 7, 7, 100, seed=0)
    rows = np.stack([np.random.default_rng(i).choice(len(bank.x), 64) for i in range(2)])
    ops, behaviors, keep = ["add", "remove"], ["palindrome", "all_same"], [["all_same"], ["all_same"]]
    point = neuron_points(spec)[0]
    perm = torch.randperm(point.n_neurons)
    order, start = [], 0
    for p in get_family(spec).hook_points(spec):
        ids = torch.arange(start, start + p.n_neurons)
        order.append(ids[perm] if p.name == point.name else ids)
        start += p.n_neurons
    moved = Encoded(enc.tokens[:, torch.cat(order)], enc.latent, enc.probs, enc.profile)
    grads = edit_gradient(spec, params, bank, rows, ops, behaviors, keep)
    permuted = _permute(spec, params, point.name, perm)
    grads_permuted = edit_gradient(spec, permuted, bank, rows, ops, behaviors, keep)
    for g, g_permuted in zip(grads, grads_permuted):  # the edit and the hold gradient
        for k in g:
            torch.testing.assert_close(g_permuted[k], _permute(spec, g, point.name, perm)[k], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        a = editor(spec, params, *grads, enc, *editor.codes(ops, behaviors))
        b = editor(spec, permuted, *grads_permuted, moved, *editor.codes(ops, behaviors))
    expected = _permute(spec, a, point.name, perm)
    assert set(a) == {k for k in params if k != "embed"}
    for k in a:
        torch.testing.assert_close(b[k], expected[k], rtol=1e-4, atol=1e-6)


def test_onepass_editor_trains_on_a_tiny_pool_and_edits(tmp_path: Path, single_thread) -> None:
    """A few training steps on four MLPs lower the functional loss from the untrained step's; the saved editor
    reloads (safetensors) and its edit changes the model's weights and its outputs on B's positives."""
    spec = ArchSpec(family="mlp", depth=2, width=16, embed_dim=8)
    seeds = [11, 12, 13, 14]
    data = make_cohort_data([["all_same"], ["palindrome"], ["all_same"], ["starts_with"]], 7, 7, 600, 100, seeds)
    params = get_family(spec).init(spec, seeds)
    train_cohort(spec, params, torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]),
                 torch.full((4,), 1e-2), 10, 64, seeds)
    bank = BehaviorBank.build(NAMES, 7, 7, 200, seed=0)
    pool = Pool(spec, params, _encoded(spec, 4), [("all_same",), ("palindrome",), ("all_same",), ("starts_with",)],
                [None] * 4)
    cfg = OnePassConfig(d_hidden=16, steps=40, batch_models=4, grad_rows=64, examples_per_model=64, lr=3e-3)
    editor = OnePassEditor(cfg, NAMES, 12, 5)
    history = train_onepass(editor, [pool], bank)
    assert len(history) == 40 and all(np.isfinite(h["loss"]) for h in history)
    assert np.mean([h["loss"] for h in history[-10:]]) < np.mean([h["loss"] for h in history[:10]])
    save_onepass(editor, tmp_path)
    loaded = load_onepass(tmp_path)
    assert load_onepass(tmp_path / "none") is None
    one = {k: v[:1] for k, v in params.items()}
    delta = onepass_edit(loaded, spec, one, pool.enc.select(torch.tensor([0])), bank, ["add"], ["palindrome"],
                         [["all_same"]])
    assert set(delta) == {k for k in params if k != "embed"} and all(torch.isfinite(v).all() for v in delta.values())
    assert sum(float(v.abs().sum()) for v in delta.values()) > 0
    x = torch.from_numpy(bank.x[bank.positives[NAMES.index("palindrome")][:200]])
    family = get_family(spec)
    before = family.forward(spec, one, x)
    after = family.forward(spec, {k: v + delta[k] if k in delta else v for k, v in one.items()}, x)
    assert float((after - before).mean()) > 0  # the add pushes B's positives up
