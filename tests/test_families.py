"""The batched MLP family and trainer against a plain per-model PyTorch reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from reference_training import train_reference

from zoo.arch import ArchSpec
from zoo.data import make_cohort_data
from zoo.families import get_family
from zoo.train import train_cohort


class ReferenceMLP(nn.Module):
    """The same architecture as one ordinary nn.Module."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.embed = nn.Embedding(spec.vocab, spec.embed_dim)
        dims = [spec.length * spec.embed_dim] + [spec.width] * spec.depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], 1)

    def load_from(self, params: dict[str, torch.Tensor], m: int) -> None:
        with torch.no_grad():
            self.embed.weight.copy_(params["embed"][m])
            for i, lin in enumerate(self.hidden):
                lin.weight.copy_(params[f"w{i}"][m].T)
                lin.bias.copy_(params[f"b{i}"][m])
            self.out.weight.copy_(params["w_out"][m].T)
            self.out.bias.copy_(params["b_out"][m])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(1)
        for lin in self.hidden:
            h = torch.relu(lin(h))
        return self.out(h).squeeze(-1)


@pytest.fixture()
def cohort():
    spec = ArchSpec(depth=2, width=16, embed_dim=4)
    seeds = [11, 22, 33]
    data = make_cohort_data([["palindrome"], ["all_same", "contains_abc"], ["sorted_ascending"]], 7, 7, 96, 32, seeds)
    return spec, seeds, data


def test_init_depends_only_on_each_models_seed():
    spec = ArchSpec()
    fam = get_family(spec)
    a = fam.init(spec, [1, 2, 3])
    b = fam.init(spec, [9, 2])
    for k in a:
        assert torch.equal(a[k][1], b[k][1])
        assert not torch.equal(a[k][0], a[k][2])


@pytest.mark.parametrize("embed_dim", [4, 2], ids=["one-hot first layer", "gathered first layer"])
def test_forward_matches_reference_and_hooks_address_neurons(cohort, embed_dim):
    spec, seeds, data = cohort
    spec = spec.model_copy(update={"embed_dim": embed_dim})  # vocabulary 7: one-hot table if 7 <= 2 * embed_dim
    fam = get_family(spec)
    params = fam.init(spec, seeds)
    x = torch.from_numpy(data["x_test"])
    cache: dict[str, torch.Tensor] = {}
    logits = fam.forward(spec, params, x, cache=cache)
    assert logits.shape == (3, 32)
    assert [p.name for p in fam.hook_points(spec)] == ["hidden.0", "hidden.1", "output"]
    assert cache["hidden.1"].shape == (3, 32, 16)
    for m in range(3):
        ref = ReferenceMLP(spec)
        ref.load_from(params, m)
        torch.testing.assert_close(logits[m], ref(x[m]), rtol=1e-5, atol=1e-6)
    # shared inputs (probes) give the same answer as per-model copies of them
    shared = fam.forward(spec, params, x[0])
    torch.testing.assert_close(shared[0], logits[0])
    # an intervention at a hook point changes what follows it: ablating every neuron leaves only the bias
    ablated = fam.forward(spec, params, x, interventions={"hidden.1": torch.zeros_like})
    torch.testing.assert_close(ablated, params["b_out"].expand(3, 32))


def test_batched_training_matches_per_model_training(cohort):
    spec, seeds, data = cohort
    fam = get_family(spec)
    params = fam.init(spec, seeds)
    init = {k: v.clone() for k, v in params.items()}
    lr = torch.tensor([3e-3, 1e-2, 5e-3])
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    epochs, bs = 3, 32
    train_cohort(spec, params, x, y, lr, epochs, bs, seeds)
    for m, seed in enumerate(seeds):
        ref = ReferenceMLP(spec)
        ref.load_from(init, m)
        train_reference(ref, x[m], y[m], float(lr[m]), seed, epochs, bs)
        trained = ReferenceMLP(spec)
        trained.load_from(params, m)
        for (name, a), b in zip(trained.named_parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"model {m} {name}")


def test_training_learns_and_is_reproducible(cohort):
    spec, seeds, data = cohort
    fam = get_family(spec)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    runs = []
    for _ in range(2):
        params = fam.init(spec, seeds)
        hist = train_cohort(spec, params, x, y, torch.full((3,), 1e-2), 15, 32, seeds)
        runs.append(params)
    assert np.all(hist[-1].numpy() < hist[0].numpy())
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k])


def test_every_family_is_registered():
    from zoo.families import FAMILIES

    assert set(FAMILIES) == {"mlp", "gru", "attention", "conv1d"}


def test_cohort_adam_matches_torch_adam_per_model():
    from zoo.train import CohortAdam

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 5, generator=gen)
    lr = torch.tensor([1e-3, 1e-2, 3e-2])
    refs = [w[m].clone().requires_grad_(True) for m in range(3)]
    opts = [torch.optim.Adam([r], lr=float(lr[m])) for m, r in enumerate(refs)]
    opt = CohortAdam(lr=lr)
    params = {"w": w.clone()}
    for _ in range(5):
        g = torch.randn(3, 4, 5, generator=gen)
        params["w"].grad = g.clone()
        opt.step(params)
        assert params["w"].grad is None
        for m in range(3):
            refs[m].grad = g[m].clone()
            opts[m].step()
    for m in range(3):
        torch.testing.assert_close(params["w"][m], refs[m].detach(), rtol=1e-6, atol=1e-7)


def test_training_does_not_depend_on_chunking(cohort, monkeypatch):
    """Models are stepped in chunks for speed; the chunk size must not change any model's result."""
    spec, seeds, data = cohort
    fam = get_family(spec)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    lr = torch.tensor([3e-3, 1e-2, 5e-3])
    runs = []
    for chunk in (64, 2):
        monkeypatch.setattr(fam, "cpu_chunk", chunk)
        params = fam.init(spec, seeds)
        hist = train_cohort(spec, params, x, y, lr, 2, 32, seeds)
        runs.append((params, hist))
    for k in runs[0][0]:
        torch.testing.assert_close(runs[0][0][k], runs[1][0][k], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-6, atol=1e-7)


def test_a_family_is_its_file_and_names_its_own_class():
    import pkgutil

    import zoo.families
    from interpreter.targets import FAMILY_CLASSES
    from zoo.arch import register
    from zoo.families import FAMILIES

    modules = {m.name for m in pkgutil.iter_modules(zoo.families.__path__)} - {"base"}
    assert modules == set(FAMILIES)  # every file in zoo/families is a registered family, nothing else is
    assert FAMILY_CLASSES[:3] == ("mlp", "gru", "attention")  # what stored interpreters' family heads read
    assert [FAMILIES[n].class_index for n in FAMILY_CLASSES] == list(range(len(FAMILIES)))

    class Impostor:
        name, class_index = "impostor", FAMILIES["gru"].class_index

    with pytest.raises(ValueError, match="class_index"):
        register(Impostor)
    assert "impostor" not in FAMILIES
