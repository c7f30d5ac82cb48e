"""The conv1d family, the fourth family, added as one file: parity with nn.Conv1d, training, signatures,
interventions, localization and the guided edit, and what the registry derives from it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from reference_training import train_reference

from cluster.config import load_config
from interpreter.editing.editor import guided_edit
from interpreter.editing.localization import greedy_carriers
from interpreter.editing.protocol import judge, measure
from interpreter.targets import FAMILY_CLASSES, build_targets, family_class, specs_for
from zoo.arch import ArchSpec, NeuronKind
from zoo.behavior_bank import BehaviorBank
from zoo.build import build_cohort
from zoo.config import ArchChoice, ZooConfig, plan_zoo
from zoo.data import make_cohort_data
from zoo.errors import ConfigError
from zoo.families import get_family, neuron_points, split_neurons
from zoo.interventions import mean_ablate, neuron_mean, resample, zero_ablate
from zoo.probes import make_probe_set
from zoo.signatures import cohort_signatures
from zoo.store import ZooStore
from zoo.train import train_cohort

SEEDS = [11, 22, 33]
BEHAVIORS = [["palindrome"], ["all_same", "contains_abc"], ["sorted_ascending"]]
SPEC = ArchSpec(family="conv1d", depth=2, width=6, embed_dim=5, kernel_size=3)


class ReferenceConv1d(nn.Module):
    """nn.Embedding -> (nn.Conv1d(padding="same") -> activation) x depth -> mean over positions -> nn.Linear."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.embed = nn.Embedding(spec.vocab, spec.embed_dim)
        dims = [spec.embed_dim] + [spec.width] * spec.depth
        self.convs = nn.ModuleList(nn.Conv1d(a, b, spec.kernel_size, padding="same") for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(spec.width, 1)
        self.act = {"relu": torch.relu, "tanh": torch.tanh, "gelu": nn.functional.gelu}[spec.activation]

    def ordered_params(self) -> list[tuple[str, torch.Tensor]]:
        """(batched name, parameter) pairs."""
        pairs = [("embed", self.embed.weight)]
        for i, c in enumerate(self.convs):
            pairs += [(f"w{i}", c.weight), (f"b{i}", c.bias)]
        return pairs + [("w_out", self.out.weight), ("b_out", self.out.bias)]

    def load_from(self, params: dict[str, torch.Tensor], m: int) -> None:
        """Copy model m; a batched conv weight [C_in*K, C_out] is nn.Conv1d's [C_out, C_in, K] flattened and transposed."""
        with torch.no_grad():
            for name, p in self.ordered_params():
                p.copy_(params[name][m].T.reshape(p.shape) if name.startswith("w") else params[name][m])

    def batched(self, name: str, p: torch.Tensor) -> torch.Tensor:
        """A parameter in the batched layout (for comparing trained weights)."""
        return p.reshape(p.shape[0], -1).T if name.startswith("w") else p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).transpose(1, 2)  # [B, C, L]
        for c in self.convs:
            h = self.act(c(h))
        return self.out(h.mean(dim=2)).squeeze(-1)


@pytest.fixture(scope="module")
def data():
    return make_cohort_data(BEHAVIORS, 7, 7, 96, 32, SEEDS)


def test_init_depends_only_on_each_models_seed():
    fam = get_family(SPEC)
    a, b = fam.init(SPEC, [1, 2, 3]), fam.init(SPEC, [9, 2])
    for k in a:
        assert torch.equal(a[k][1], b[k][1])
        assert not torch.equal(a[k][0], a[k][2])


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # the reference's own copy
@pytest.mark.parametrize("kernel_size, activation", [(3, "relu"), (4, "tanh"), (1, "gelu")])
def test_forward_matches_nn_conv1d(data, kernel_size: int, activation: str):
    """Odd, even (one more tap to the right, as padding="same") and pointwise kernels."""
    spec = SPEC.model_copy(update={"kernel_size": kernel_size, "activation": activation})
    fam = get_family(spec)
    params = fam.init(spec, SEEDS)
    x = torch.from_numpy(data["x_test"])
    logits = fam.forward(spec, params, x)
    assert logits.shape == (3, 32)
    for m in range(3):
        ref = ReferenceConv1d(spec)
        ref.load_from(params, m)
        with torch.no_grad():
            torch.testing.assert_close(logits[m], ref(x[m]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fam.forward(spec, params, x[0])[0], logits[0])  # shared inputs (probes)


def test_batched_training_matches_per_model_training(data):
    fam = get_family(SPEC)
    params = fam.init(SPEC, SEEDS)
    init = {k: v.clone() for k, v in params.items()}
    lr = torch.tensor([3e-3, 1e-2, 5e-3])
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_cohort(SPEC, params, x, y, lr, 2, 32, SEEDS)
    for m, seed in enumerate(SEEDS):
        ref = ReferenceConv1d(SPEC)
        ref.load_from(init, m)
        train_reference(ref, x[m], y[m], float(lr[m]), seed, 2, 32)
        for name, p in ref.ordered_params():
            torch.testing.assert_close(params[name][m], ref.batched(name, p.detach()), rtol=1e-4, atol=1e-5,
                                       msg=f"model {m} {name}")


def test_hooks_and_ablations(data):
    """Hooks address every channel at every position; ablating a last-layer channel (zero or mean) equals folding it
    out of the readout, since only the mean over positions reaches it."""
    fam = get_family(SPEC)
    params = fam.init(SPEC, SEEDS)
    x = torch.from_numpy(data["x_test"])
    cache: dict[str, torch.Tensor] = {}
    logits = fam.forward(SPEC, params, x, cache=cache)
    points = fam.hook_points(SPEC)
    assert [(p.name, p.n_neurons, p.kind, p.fan_in) for p in points] == [
        ("conv.0", 6, NeuronKind.HIDDEN, 15), ("conv.1", 6, NeuronKind.HIDDEN, 18), ("output", 1, NeuronKind.OUTPUT, 6)]
    assert cache["conv.0"].shape == cache["conv.1"].shape == (3, 32, 7, 6)
    assert cache["output"].shape == (3, 32, 1)
    assert neuron_points(SPEC) == points[:2]
    torch.testing.assert_close(fam.forward(SPEC, params, x, interventions={"conv.1": torch.zeros_like}),
                               params["b_out"].expand(3, 32))
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 1], mask[1, 4], mask[2, 0] = True, True, True
    mean = neuron_mean(cache["conv.1"])
    folded_zero, folded_mean = {k: v.clone() for k, v in params.items()}, {k: v.clone() for k, v in params.items()}
    for m, j in ((0, 1), (1, 4), (2, 0)):
        folded_mean["b_out"][m] += params["w_out"][m, j, 0] * mean[m, j]
        folded_zero["w_out"][m, j], folded_mean["w_out"][m, j] = 0.0, 0.0
    for ablation, folded in ((zero_ablate(mask), folded_zero), (mean_ablate(mask, mean), folded_mean)):
        ablated = fam.forward(SPEC, params, x, interventions={"conv.1": ablation})
        torch.testing.assert_close(ablated, fam.forward(SPEC, folded, x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(ablated, logits)


def test_signatures_cover_every_channel():
    params = get_family(SPEC).init(SPEC, SEEDS)
    probes = make_probe_set(["palindrome", "all_same", "contains_abc"], 7, 7)
    sig = cohort_signatures(SPEC, params, probes)
    assert sig["features"].shape[:2] == (3, 13)
    assert sig["logits"].shape == (3, len(probes))
    assert torch.isfinite(torch.from_numpy(sig["features"])).all()
    assert list(sig["kind"]) == [0] * 12 + [1] and list(sig["layer"]) == [0] * 6 + [1] * 6 + [2]


def test_keys_classes_and_unknown_families():
    """Kernel size enters only conv1d's key; stored keys and the interpreter's first family classes stay put."""
    assert ArchSpec(family="conv1d", depth=1, width=8, embed_dim=4).key() == "conv1d-d1-w8-e4-k3-relu"
    assert ArchSpec(family="conv1d", kernel_size=5).key() != ArchSpec(family="conv1d").key()
    assert ArchSpec(kernel_size=5).key() == ArchSpec().key() == "mlp-d2-w32-e8-relu"
    assert ArchSpec(family="attention", depth=1, width=16).key() == "attention-d1-w16-e8-h2-relu"
    with pytest.raises(ValueError, match="unknown architecture family 'lstm'; known: mlp, gru, attention, conv1d"):
        ArchSpec(family="lstm")
    with pytest.raises(ConfigError, match="known: mlp, gru, attention, conv1d"):
        get_family("lstm")
    tiny = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
    with pytest.raises(ConfigError, match=r"zoo\.architectures\.0\.family: .*unknown architecture family 'lstm'"):
        load_config(tiny, ["zoo.architectures=[{family: lstm}]"])
    assert load_config(tiny, ["zoo.architectures=[{family: conv1d, kernel_size: 5}]"]).zoo.architectures[0].kernel_size == 5


def test_the_family_head_keeps_old_classes_and_widens_only_for_new_families():
    """Stored interpreters read (mlp, gru, attention); a zoo of those keeps its 3-class head, a conv zoo gets a 4th."""
    assert FAMILY_CLASSES[:3] == ("mlp", "gru", "attention") and family_class("conv1d") == 3
    old = build_targets(pd.DataFrame({"family": ["mlp", "attention"], "behaviors": [["b0"], ["b1"]]}), ["b0", "b1"])
    new = build_targets(pd.DataFrame({"family": ["mlp", "conv1d"], "behaviors": [["b0"], ["b1"]]}), ["b0", "b1"])
    assert list(new["family"]) == [0, 3]
    family_head = {t: next(s for s in specs_for(targets) if s.name == "family") for t, targets in (("old", old), ("new", new))}
    assert family_head["old"].classes == ("mlp", "gru", "attention")
    assert family_head["new"].classes == ("mlp", "gru", "attention", "conv1d")


def test_recipes_choose_kernel_sizes_and_keep_old_fingerprints():
    """kernel_size is sampled like any other choice, and a recipe that leaves it at its default dumps (and hashes)
    as it did before the field existed."""
    assert "kernel_size" not in ArchChoice().model_dump()
    assert ArchChoice(family="conv1d", kernel_size=[3, 5]).model_dump()["kernel_size"] == [3, 5]
    cfg = ZooConfig(n_models=40, cohort_size=4, architectures=[{"family": "conv1d", "kernel_size": [3, 5]}])
    assert {p.spec.kernel_size for p in plan_zoo(cfg)} == {3, 5}
    assert ZooConfig(architectures=[{"kernel_size": 3}]).fingerprint() == ZooConfig().fingerprint()
    assert ZooConfig(architectures=[{"kernel_size": 5}]).fingerprint() != ZooConfig().fingerprint()


def test_a_conv_cohort_builds_and_learns(tmp_path, single_thread):
    """The zoo's own cohort builder: train, evaluate, store and reload a conv1d cohort."""
    cfg = ZooConfig(n_models=4, cohort_size=4, n_train=400, n_test=100, epochs=20, behaviors=["all_same", "contains_abc"],
                    behaviors_per_model=(1, 1), lr_range=(0.01, 0.01),
                    architectures=[{"family": "conv1d", "depth": 1, "width": 8, "embed_dim": 4}])
    store = ZooStore(tmp_path)
    build_cohort(plan_zoo(cfg)[0], cfg, store)
    spec, params, manifest = store.load_cohort("c00000")
    assert spec.family == "conv1d" and set(manifest.arch) == {"conv1d-d1-w8-e4-k3-relu"}
    assert params["w0"].shape == (4, 4 * 3, 8)
    assert (manifest.test_acc > 0.75).all(), manifest.test_acc.tolist()


@pytest.fixture(scope="module")
def trained_pair():
    """Two conv models trained on all_same and contains_abc."""
    spec = ArchSpec(family="conv1d", depth=1, width=16, embed_dim=8)
    have = ["all_same", "contains_abc"]
    data = make_cohort_data([have] * 2, 7, 7, 1500, 100, [5, 6])
    params = get_family(spec).init(spec, [5, 6])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train_cohort(spec, params, torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]),
                 torch.full((2,), 1e-2), 20, 64, [5, 6])
    torch.set_num_threads(threads)
    return spec, params, have


NAMES = ["all_same", "palindrome", "starts_with", "contains_abc"]


def test_localization_picks_channels_that_carry_the_behavior(trained_pair, single_thread):
    """Greedy carriers rank conv channels through the family's forward. On fresh data, resampling the 3 chosen
    channels lowers contains_abc and spares all_same far more selectively than resampling 3 random channels."""
    spec, params, have = trained_pair
    bank, fresh = BehaviorBank.build(NAMES, 7, 7, 200, seed=0), BehaviorBank.build(NAMES, 7, 7, 200, seed=1)
    chosen = greedy_carriers(spec, params, bank, [have] * 2, ["contains_abc"] * 2, k=3)
    assert chosen.shape == (2, 16) and (chosen.sum(1) == 3).all()
    before = measure(spec, params, fresh, [have] * 2)

    def drops(mask: torch.Tensor) -> np.ndarray:
        """[M, 2]: how much contains_abc and all_same fall with the masked channels resampled."""
        hooks = {name: resample(part, torch.Generator().manual_seed(0)) for name, part in split_neurons(spec, mask).items()}
        after = measure(spec, params, fresh, [have] * 2, interventions=hooks)
        return np.array([[b.behavior[k] - a.behavior[k] for k in ("contains_abc", "all_same")] for b, a in zip(before, after)])

    gen = torch.Generator().manual_seed(1)
    random = [torch.zeros(2, 16, dtype=torch.bool).scatter_(1, torch.stack([torch.randperm(16, generator=gen)[:3]
                                                                              for _ in range(2)]), True) for _ in range(5)]
    mine = drops(chosen)
    selectivity = mine[:, 0] - mine[:, 1]
    by_chance = np.mean([d[:, 0] - d[:, 1] for d in map(drops, random)], axis=0)
    assert (mine[:, 0] > 0.1).all() and (selectivity > by_chance + 0.2).all(), (mine, by_chance)


def test_guided_edit_removes_a_behavior_from_a_conv_model(trained_pair, single_thread):
    spec, params, have = trained_pair
    bank, fresh, check = (BehaviorBank.build(NAMES, 7, 7, 200, seed=s) for s in (0, 1, 2))
    ops, targets, keep = ["remove", "remove"], ["contains_abc", "all_same"], [have, have]
    delta = guided_edit(spec, params, bank, ops, targets, keep, steps=200, lr=1e-2, check=check, rounds=2)
    edited = {k: v + delta[k] if k in delta else v for k, v in params.items()}
    before, after = measure(spec, params, fresh, [have] * 2), measure(spec, edited, fresh, [have] * 2)
    for m in range(2):
        assert judge(ops[m], targets[m], have, before[m], after[m]).success, (before[m], after[m])
