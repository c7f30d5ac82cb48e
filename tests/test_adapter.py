"""The model adapter: signatures of any nn.Module in the built-in schema, hook rules, output contract, sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from zoo.adapters.signature import signature_record, subject_signature
from zoo.adapters.sources import from_class_file, from_hooked_transformer, load_weights
from zoo.adapters.subject import AdapterError, FamilySubject, ModuleSubject
from zoo.arch import ArchSpec, NeuronKind
from zoo.families import get_family
from zoo.foreign.architectures import CNNClassifier, LSTMClassifier, ResMLP, transformer_config
from zoo.probes import make_probe_set
from zoo.signatures import cohort_signatures, feature_names

BEHAVIORS = ("all_same", "palindrome", "sorted_ascending", "contains_abc")
PROBES = make_probe_set(BEHAVIORS, 7, 7)


class PlainMLP(nn.Module):
    """The mlp family's function as an ordinary module (weights copied from a family model)."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.embed = nn.Embedding(spec.vocab, spec.embed_dim)
        dims = [spec.length * spec.embed_dim] + [spec.width] * spec.depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(spec.depth))
        self.out = nn.Linear(spec.width, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens).flatten(1)
        for layer, act in zip(self.layers, self.acts):
            h = act(layer(h))
        return self.out(h)  # [N, 1]: accepted


def family_model(seed: int = 3) -> tuple[ArchSpec, dict[str, torch.Tensor]]:
    spec = ArchSpec(family="mlp", depth=2, width=12, embed_dim=4)
    return spec, get_family(spec).init(spec, [seed])


def plain_copy(spec: ArchSpec, params: dict[str, torch.Tensor]) -> PlainMLP:
    m = PlainMLP(spec)
    with torch.no_grad():
        m.embed.weight.copy_(params["embed"][0])
        for i, layer in enumerate(m.layers):
            layer.weight.copy_(params[f"w{i}"][0].T)
            layer.bias.copy_(params[f"b{i}"][0].reshape(-1))
        m.out.weight.copy_(params["w_out"][0].T)
        m.out.bias.copy_(params["b_out"][0].reshape(-1))
    return m


def test_family_subject_matches_the_cohort_extractor():
    spec, params = family_model()
    ref = cohort_signatures(spec, params, PROBES)
    mine = subject_signature(FamilySubject(spec, params), PROBES)
    for key in ("features", "logits", "weight_stats"):
        np.testing.assert_allclose(mine[key], ref[key], rtol=1e-5, atol=1e-5)
    for key in ("layer", "index", "rel_depth", "kind", "fan_in"):
        np.testing.assert_array_equal(mine[key], ref[key])


def test_any_module_gives_the_built_in_signature_of_the_same_function():
    spec, params = family_model()
    ref = subject_signature(FamilySubject(spec, params), PROBES)
    plain = ModuleSubject(plain_copy(spec, params), vocab=7, length=7)
    mine = subject_signature(plain, PROBES)
    assert mine["features"].shape == ref["features"].shape and mine["features"].shape[-1] == len(feature_names(PROBES))
    np.testing.assert_allclose(mine["logits"], ref["logits"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mine["features"], ref["features"], rtol=1e-3, atol=1e-3)
    for key in ("layer", "rel_depth", "kind", "fan_in"):
        np.testing.assert_array_equal(mine[key], ref[key])


def test_default_rule_reads_recurrent_steps_conv_channels_and_activations():
    lstm = ModuleSubject(LSTMClassifier(hidden=10), length=7)
    assert [(p.name, p.n_neurons, p.kind) for p in lstm.hook_points()] == [("lstm", 10, NeuronKind.HIDDEN), ("output", 1, NeuronKind.OUTPUT)]
    assert lstm.hook_points()[0].fan_in == 8 + 10
    cnn = ModuleSubject(CNNClassifier(channels=6), length=7)
    assert [(p.name, p.n_neurons, p.fan_in) for p in cnn.hook_points()][:2] == [("act1", 6, 24), ("act2", 6, 18)]
    res = ModuleSubject(ResMLP(width=8, hidden=20, blocks=3), length=7)
    assert [p.n_neurons for p in res.neuron_points()] == [20, 20, 20]
    rec = signature_record(cnn, PROBES)
    assert rec["features"].shape == (13, len(feature_names(PROBES))) and np.isfinite(rec["features"]).all()


class HandRNN(nn.Module):
    """A hand-written recurrent cell: one Tanh module called at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.cell, self.act, self.out = nn.Embedding(7, 4), nn.Linear(4 + 5, 5), nn.Tanh(), nn.Linear(5, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(len(tokens), 5)
        for t in range(tokens.shape[1]):
            h = self.act(self.cell(torch.cat([self.embed(tokens[:, t]), h], dim=1)))
        return self.out(h)  # two logits: read as class 1 against class 0


def test_repeated_calls_are_positions_and_two_logits_are_a_difference():
    subject = ModuleSubject(HandRNN(), length=7)
    cache: dict[str, torch.Tensor] = {}
    x = torch.from_numpy(PROBES.tokens[:9])
    logits = subject.forward(x, cache=cache)
    assert cache["act"].shape == (1, 9, 7, 5)
    out = subject.module(x)
    torch.testing.assert_close(logits, out[:, 1] - out[:, 0])


def test_hooked_transformer_through_its_own_hooks(tmp_path):
    pytest.importorskip("transformer_lens")
    cfg = transformer_config(vocab=7, length=7, d_model=8, n_heads=2)
    from zoo.adapters.sources import hooked_transformer

    model = hooked_transformer(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "tl.safetensors"))
    subject = from_hooked_transformer(cfg, tmp_path / "tl.safetensors")
    kinds = [(p.name, p.n_neurons, p.kind) for p in subject.hook_points()]
    assert kinds[:2] == [("blocks.0.attn.hook_z", 2, NeuronKind.HEAD), ("blocks.0.mlp.hook_post", 32, NeuronKind.HIDDEN)]
    assert kinds[-1][2] == NeuronKind.OUTPUT and len(kinds) == 5
    x = torch.from_numpy(PROBES.tokens[:5])
    torch.testing.assert_close(subject.logits(x), model(x)[:, -1, 0])


def test_class_file_source_and_its_bad_inputs(tmp_path):
    src = tmp_path / "net.py"
    src.write_text("import torch\nfrom torch import nn\n"
                   "class Net(nn.Module):\n"
                   "    def __init__(self, width=6, vocab=7):\n"
                   "        super().__init__()\n"
                   "        self.e = nn.Embedding(vocab, 3); self.f = nn.Linear(21, width); self.a = nn.GELU(); self.o = nn.Linear(width, 1)\n"
                   "    def forward(self, x):\n"
                   "        return self.o(self.a(self.f(self.e(x).flatten(1))))\n"
                   "class Wide(Net):\n"
                   "    def forward(self, x):\n"
                   "        return super().forward(x).repeat(1, 3)\n"
                   "class Bad(Net):\n"
                   "    def forward(self, x):\n"
                   "        return super().forward(x) * float('nan')\n")
    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(src.read_text(), str(src), "exec"), ns)  # noqa: S102 - the test's own source
    save_file(ns["Net"](width=6).state_dict(), str(tmp_path / "w.safetensors"))
    subject = from_class_file(f"{src}:Net", tmp_path / "w.safetensors", "{width: 6, vocab: 7, length: 7}")
    assert [p.n_neurons for p in subject.hook_points()] == [6, 1]
    assert signature_record(subject, PROBES)["features"].shape == (7, len(feature_names(PROBES)))

    def error(fn) -> str:
        with pytest.raises(AdapterError) as e:
            fn()
        return str(e.value)

    assert "output shape [" in error(lambda: subject_signature(from_class_file(f"{src}:Wide", tmp_path / "w.safetensors", "{width: 6}"), PROBES))
    assert "NaN" in error(lambda: subject_signature(from_class_file(f"{src}:Bad", tmp_path / "w.safetensors", "{width: 6}"), PROBES))
    assert "do not match Net" in error(lambda: from_class_file(f"{src}:Net", tmp_path / "w.safetensors", "{width: 5}"))
    assert "vocabulary 9" in error(lambda: subject_signature(from_class_file(f"{src}:Net", tmp_path / "w.safetensors", "{width: 6, vocab: 9}"), PROBES))
    assert "length 6" in error(lambda: subject_signature(from_class_file(f"{src}:Net", tmp_path / "w.safetensors", "{width: 6, length: 6}"), PROBES))
    (tmp_path / "w.pt").write_bytes(b"\x80\x04not a safetensors file")
    assert "not a safetensors file" in error(lambda: load_weights(tmp_path / "w.pt"))
    assert "no torch.nn.Module subclass named 'Nope'" in error(lambda: from_class_file(f"{src}:Nope", tmp_path / "w.safetensors"))
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    assert "cannot import" in error(lambda: from_class_file(f"{tmp_path / 'broken.py'}:Net", tmp_path / "w.safetensors"))


def test_guided_edit_and_localization_run_on_any_module_through_functional_call():
    """A CNN taught one behavior has it removed by the editing package's guided edit, and the editing package's
    carrier search runs on it, both through the module presented as a family."""
    from interpreter.adapter_editing import edit_module
    from interpreter.editing.localization import greedy_carriers
    from zoo.adapters.family import as_family, release
    from zoo.behavior_bank import BehaviorBank
    from zoo.foreign.train import ForeignZooConfig, train_one

    torch.set_num_threads(1)
    cfg = ForeignZooConfig(n_per_arch=1, behaviors=list(BEHAVIORS), n_train=1024, n_test=256, epochs=4)
    entry = {"model_id": "c0", "arch": "cnn", "args": {"vocab": 7, "embed_dim": 4, "channels": 8}, "behaviors": ["all_same"],
             "lr": 0.01, "label_noise": 0.0, "seed": 5}
    module, row = train_one(entry, cfg)
    assert row["test_acc"] > 0.8
    subject = ModuleSubject(module, name="c0", vocab=7, length=7)
    _, verdict = edit_module(subject, "remove", "all_same", ["all_same"], list(BEHAVIORS), steps=40, rounds=0, bank_size=64)
    assert verdict["before"]["behavior"]["all_same"] > 0.8
    assert verdict["after"]["behavior"]["all_same"] < verdict["before"]["behavior"]["all_same"] - 0.3
    spec, params = as_family(subject)
    try:
        bank = BehaviorBank.build(list(BEHAVIORS), 7, 7, 32, 0)
        mask = greedy_carriers(spec, params, bank, [["all_same"]], ["all_same"], k=1, n=32)
    finally:
        release(spec)
    assert mask.shape == (1, 16) and int(mask.sum()) == 1
