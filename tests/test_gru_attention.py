"""The batched GRU and attention families against plain per-model PyTorch modules."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
from reference_training import train_reference

from zoo.arch import ArchSpec
from zoo.data import make_cohort_data
from zoo.families import get_family
from zoo.families.attention import MLP_RATIO
from zoo.probes import make_probe_set
from zoo.signatures import cohort_signatures
from zoo.train import train_cohort

SEEDS = [11, 22, 33]
BEHAVIORS = [["palindrome"], ["all_same", "contains_abc"], ["sorted_ascending"]]


class ReferenceGRU(nn.Module):
    """nn.Embedding -> nn.GRU -> last hidden state -> nn.Linear."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.embed = nn.Embedding(spec.vocab, spec.embed_dim)
        self.gru = nn.GRU(spec.embed_dim, spec.width, num_layers=spec.depth, batch_first=True)
        self.out = nn.Linear(spec.width, 1)
        self.depth = spec.depth

    def load_from(self, params: dict[str, torch.Tensor], m: int) -> None:
        with torch.no_grad():
            self.embed.weight.copy_(params["embed"][m])
            for i in range(self.depth):
                getattr(self.gru, f"weight_ih_l{i}").copy_(params[f"w_ih{i}"][m].T)
                getattr(self.gru, f"weight_hh_l{i}").copy_(params[f"w_hh{i}"][m].T)
                getattr(self.gru, f"bias_ih_l{i}").copy_(params[f"b_ih{i}"][m])
                getattr(self.gru, f"bias_hh_l{i}").copy_(params[f"b_hh{i}"][m])
            self.out.weight.copy_(params["w_out"][m].T)
            self.out.bias.copy_(params["b_out"][m])

    def ordered_params(self) -> list[tuple[str, nn.Parameter]]:
        """(batched name, parameter) pairs, for comparing trained weights."""
        pairs = [("embed", self.embed.weight)]
        for i in range(self.depth):
            pairs += [(f"w_ih{i}", getattr(self.gru, f"weight_ih_l{i}")), (f"w_hh{i}", getattr(self.gru, f"weight_hh_l{i}")),
                      (f"b_ih{i}", getattr(self.gru, f"bias_ih_l{i}")), (f"b_hh{i}", getattr(self.gru, f"bias_hh_l{i}"))]
        return pairs + [("w_out", self.out.weight), ("b_out", self.out.bias)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.embed(x))
        return self.out(states[:, -1]).squeeze(-1)


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, n_heads, batch_first=True)
        self.fc, self.proj = nn.Linear(d, MLP_RATIO * d), nn.Linear(MLP_RATIO * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.proj(torch.relu(self.fc(self.ln2(x))))


class ReferenceAttention(nn.Module):
    """Token + position embeddings -> pre-LN blocks (nn.MultiheadAttention) -> LayerNorm -> mean pool -> nn.Linear."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        d = spec.width
        self.embed, self.pos = nn.Embedding(spec.vocab, d), nn.Parameter(torch.zeros(spec.length, d))
        self.blocks = nn.ModuleList(Block(d, spec.n_heads) for _ in range(spec.depth))
        self.ln_f, self.out = nn.LayerNorm(d), nn.Linear(d, 1)

    def mapping(self) -> list[tuple[str, torch.Tensor, bool]]:
        """(batched name, parameter, stored transposed) triples."""
        pairs = [("embed", self.embed.weight, False), ("pos", self.pos, False)]
        for i, blk in enumerate(self.blocks):
            pairs += [
                (f"ln1_w{i}", blk.ln1.weight, False), (f"ln1_b{i}", blk.ln1.bias, False),
                (f"w_qkv{i}", blk.attn.in_proj_weight, True), (f"b_qkv{i}", blk.attn.in_proj_bias, False),
                (f"w_o{i}", blk.attn.out_proj.weight, True), (f"b_o{i}", blk.attn.out_proj.bias, False),
                (f"ln2_w{i}", blk.ln2.weight, False), (f"ln2_b{i}", blk.ln2.bias, False),
                (f"w_fc{i}", blk.fc.weight, True), (f"b_fc{i}", blk.fc.bias, False),
                (f"w_proj{i}", blk.proj.weight, True), (f"b_proj{i}", blk.proj.bias, False),
            ]
        return pairs + [("ln_f_w", self.ln_f.weight, False), ("ln_f_b", self.ln_f.bias, False),
                        ("w_out", self.out.weight, True), ("b_out", self.out.bias, False)]

    def load_from(self, params: dict[str, torch.Tensor], m: int) -> None:
        with torch.no_grad():
            for name, p, transposed in self.mapping():
                p.copy_(params[name][m].T if transposed else params[name][m])

    def ordered_params(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, p) for name, p, _ in self.mapping()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos
        for blk in self.blocks:
            h = blk(h)
        return self.out(self.ln_f(h).mean(dim=1)).squeeze(-1)


REFERENCES = {"gru": ReferenceGRU, "attention": ReferenceAttention}
SPECS = {
    "gru": ArchSpec(family="gru", depth=2, width=12, embed_dim=5),
    "attention": ArchSpec(family="attention", depth=2, width=16, n_heads=4),
}


@pytest.fixture(scope="module")
def data():
    return make_cohort_data(BEHAVIORS, 7, 7, 96, 32, SEEDS)


@pytest.mark.parametrize("family", ["gru", "attention"])
def test_init_depends_only_on_each_models_seed(family):
    spec = SPECS[family]
    fam = get_family(spec)
    a = fam.init(spec, [1, 2, 3])
    b = fam.init(spec, [9, 2])
    for k in a:
        assert torch.equal(a[k][1], b[k][1])
        if not k.startswith("ln"):  # LayerNorms start at (1, 0) in every model
            assert not torch.equal(a[k][0], a[k][2])


@pytest.mark.parametrize("family", ["gru", "attention"])
def test_forward_matches_reference_module(family, data):
    spec = SPECS[family]
    fam = get_family(spec)
    params = fam.init(spec, SEEDS)
    with torch.no_grad():  # LayerNorm affines away from (1, 0), so a mix-up of them would show
        for k in params:
            if k.startswith("ln"):
                params[k].add_(0.1 * torch.randn_like(params[k]))
    x = torch.from_numpy(data["x_test"])
    logits = fam.forward(spec, params, x)
    cached = fam.forward(spec, params, x, cache={})  # the hook path (per-head contributions, stacked GRU states) agrees
    torch.testing.assert_close(cached, logits, rtol=1e-5, atol=1e-5)
    assert logits.shape == (3, 32)
    for m in range(3):
        ref = REFERENCES[family](spec)
        ref.load_from(params, m)
        ref.eval()
        with torch.no_grad():
            torch.testing.assert_close(logits[m], ref(x[m]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fam.forward(spec, params, x[0])[0], logits[0])  # shared inputs


def test_hook_shapes_and_interventions(data):
    x = torch.from_numpy(data["x_test"])  # [3, 32, 7]
    spec = SPECS["gru"]
    fam = get_family(spec)
    params = fam.init(spec, SEEDS)
    cache: dict[str, torch.Tensor] = {}
    fam.forward(spec, params, x, cache=cache)
    assert [p.name for p in fam.hook_points(spec)] == ["gru.0", "gru.1", "output"]
    assert cache["gru.0"].shape == cache["gru.1"].shape == (3, 32, 7, 12)
    assert cache["output"].shape == (3, 32, 1)
    ablated = fam.forward(spec, params, x, interventions={"gru.1": torch.zeros_like})
    torch.testing.assert_close(ablated, params["b_out"].expand(3, 32))

    spec = SPECS["attention"]
    fam = get_family(spec)
    params = fam.init(spec, SEEDS)
    cache = {}
    logits = fam.forward(spec, params, x, cache=cache)
    points = fam.hook_points(spec)
    assert [(p.name, p.n_neurons, p.kind) for p in points] == [
        ("attn.0", 4, 2), ("mlp.0", 64, 0), ("attn.1", 4, 2), ("mlp.1", 64, 0), ("output", 1, 1)]
    assert cache["attn.0"].shape == (3, 32, 7, 4)
    assert cache["mlp.1"].shape == (3, 32, 7, 64)
    assert (cache["attn.0"] > 0).all()
    # doubling a head's norm doubles its contribution; zeroing every head equals skipping attention
    same = fam.forward(spec, params, x, interventions={"attn.0": lambda a: a.clone()})
    torch.testing.assert_close(same, logits, rtol=1e-5, atol=1e-5)
    no_attn = fam.forward(spec, params, x, interventions={"attn.0": torch.zeros_like, "attn.1": torch.zeros_like})
    zeroed = {k: v.clone() for k, v in params.items()}
    for i in range(2):
        zeroed[f"w_o{i}"].zero_()
    torch.testing.assert_close(no_attn, fam.forward(spec, zeroed, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gru", "attention"])
def test_batched_training_matches_per_model_training(family, data):
    spec = SPECS[family]
    fam = get_family(spec)
    params = fam.init(spec, SEEDS)
    init = {k: v.clone() for k, v in params.items()}
    lr = torch.tensor([3e-3, 1e-2, 5e-3])
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    epochs, bs = 2, 32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a vmap "performance drop" from a missing batching rule
        train_cohort(spec, params, x, y, lr, epochs, bs, SEEDS)
    for m, seed in enumerate(SEEDS):
        ref = REFERENCES[family](spec)
        ref.load_from(init, m)
        train_reference(ref, x[m], y[m], float(lr[m]), seed, epochs, bs)
        trained = REFERENCES[family](spec)
        trained.load_from(params, m)
        for (name, a), (_, b) in zip(trained.ordered_params(), ref.ordered_params()):
            # nn.GRU's fused kernels round differently; gradients that are sums of cancelling terms
            # keep that difference relative, and Adam's normalised step turns it into ~1e-3 * lr absolute
            atol = 5e-5 if family == "gru" else 1e-5
            if name.startswith("b_qkv"):  # the key bias gets a zero gradient up to rounding noise (softmax
                d = a.shape[0] // 3  # is shift-invariant), which Adam turns into lr-sized steps: skip it
                a, b = torch.cat([a[:d], a[2 * d :]]), torch.cat([b[:d], b[2 * d :]])
            torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=f"model {m} {name}")


@pytest.mark.parametrize("family", ["gru", "attention"])
def test_cohort_signatures_cover_every_neuron(family):
    spec = SPECS[family]
    fam = get_family(spec)
    params = fam.init(spec, SEEDS)
    probes = make_probe_set(["palindrome", "all_same", "contains_abc"], 7, 7)
    sig = cohort_signatures(spec, params, probes)
    n = sum(p.n_neurons for p in fam.hook_points(spec))
    assert sig["features"].shape[:2] == (3, n)
    assert sig["logits"].shape == (3, len(probes))
    assert torch.isfinite(torch.from_numpy(sig["features"])).all()
    assert list(sig["kind"][-1:]) == [1]


def test_architecture_keys_tell_head_counts_apart():
    """Models are grouped and stacked by key: attention models with 2 and 4 heads share every weight shape, so the
    key must name the heads or one stack would run half its models with the wrong head split."""
    two, four = ArchSpec(family="attention", n_heads=2), ArchSpec(family="attention", n_heads=4)
    assert two.key() != four.key()
    assert ArchSpec(family="gru", n_heads=2).key() == ArchSpec(family="gru", n_heads=4).key()  # no heads to count
