"""Subjects: one model of any origin behind the interface the signature, reading and ablation code needs.

A subject maps token ids [N, L] to one logit per sequence and exposes its units as hook points with the same
kinds as the built-in families (``zoo.arch.HookPoint``), so its signature has exactly their schema.

- :class:`FamilySubject`: one model of a zoo (a built-in family), through the family's own forward and hooks.
- :class:`ModuleSubject`: any ``torch.nn.Module``, its units captured with forward hooks. The default rule: the
  output of every activation module (ReLU, GELU, Tanh, ...) and of every recurrent layer (``nn.RNN/LSTM/GRU``: its
  output at every step); a TransformerLens ``HookedTransformer`` is read through its own hook names instead (each
  head's write norm from ``blocks.{i}.attn.hook_z`` as kind HEAD, ``blocks.{i}.mlp.hook_post`` as hidden neurons),
  or through module names the user lists. A module called several times in one forward (a hand-written recurrent
  cell) is one point whose calls are its positions.

Output contract: a logit per sequence, shape [N] or [N, 1]; a two-logit output [N, 2] is read as class 1 against
class 0 (``out[:, 1] - out[:, 0]``). Anything else, or NaN, is an :class:`AdapterError` naming the problem.
Activations reach the cache and interventions as [1, B, ..., n] (one model, units last), like a cohort's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from zoo.arch import ArchSpec, HookPoint, NeuronKind
from zoo.errors import ZoolensError
from zoo.families import get_family
from zoo.families.base import Cache, Interventions, Params

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid, nn.Tanhshrink)
RECURRENT: tuple[type[nn.Module], ...] = (nn.RNN, nn.LSTM, nn.GRU)
PROBE_CHUNK = 2048  # sequences per forward pass when a subject runs a large probe set


class AdapterError(ZoolensError):
    """A model that cannot be read: wrong output shape, NaN outputs, a vocabulary or length it does not take."""


class Subject:
    """What reading needs of one model: its name, hook points, a forward with cache/interventions, its weights."""

    name: str
    vocab: int | None
    length: int | None
    max_length: int | None = None  # longest input it takes (a transformer's context), when the length is free

    def hook_points(self) -> list[HookPoint]:
        """The addressable unit layers in forward order; the output logit last."""
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor, cache: Cache | None = None, interventions: Interventions | None = None) -> torch.Tensor:
        """Logits [N] for tokens [N, L]; ``cache``/``interventions`` as in the families, with M = 1."""
        raise NotImplementedError

    def parameters_dict(self) -> Params:
        """Named weights, each with a leading model dimension of 1 (for weight statistics)."""
        raise NotImplementedError

    def architecture(self) -> dict[str, object]:
        """What is known of the architecture (family, depth, width ...) for reports."""
        return {}

    def neuron_points(self) -> list[HookPoint]:
        """Hidden-neuron points only (what carriers are chosen from and ablated)."""
        return [p for p in self.hook_points() if p.kind == NeuronKind.HIDDEN]

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor | object) -> torch.Tensor:
        """Logits [N] in chunks, checked finite (an AdapterError otherwise)."""
        x = torch.as_tensor(tokens, dtype=torch.int64)
        out = torch.cat([self.forward(x[i:i + PROBE_CHUNK]) for i in range(0, len(x), PROBE_CHUNK)])
        check_finite(self.name, out)
        return out


def check_finite(name: str, logits: torch.Tensor) -> None:
    """AdapterError when some logits are NaN or infinite."""
    bad = ~torch.isfinite(logits)
    if bad.any():
        raise AdapterError(f"{name}: the model outputs NaN or inf on {int(bad.sum())} of {bad.numel()} sequences")


def logit_of(name: str, out: object, n: int) -> torch.Tensor:
    """One logit per sequence [N] from a module's output (see the module doc), or an AdapterError."""
    if not isinstance(out, torch.Tensor):
        raise AdapterError(f"{name}: the model returns {type(out).__name__}, expected a tensor of logits [N] or [N, 1]")
    shape = tuple(out.shape)
    if shape == (n,):
        return out.float()
    if shape == (n, 1):
        return out[:, 0].float()
    if shape == (n, 2):
        return (out[:, 1] - out[:, 0]).float()
    raise AdapterError(f"{name}: output shape {list(shape)} for {n} sequences; expected [N], [N, 1] or [N, 2] logits")


class FamilySubject(Subject):
    """One model of a zoo cohort (a built-in family) read through the family's own forward."""

    def __init__(self, spec: ArchSpec, params: Params, name: str = "model") -> None:
        self.spec, self.params, self.name = spec, {k: v.detach() for k, v in params.items()}, name
        self.vocab, self.length = spec.vocab, spec.length
        if next(iter(self.params.values())).shape[0] != 1:
            raise ValueError("FamilySubject holds one model: params with a leading dimension of 1")

    def hook_points(self) -> list[HookPoint]:
        return get_family(self.spec).hook_points(self.spec)

    def forward(self, tokens: torch.Tensor, cache: Cache | None = None, interventions: Interventions | None = None) -> torch.Tensor:
        return get_family(self.spec).forward(self.spec, self.params, tokens, cache=cache, interventions=interventions)[0]

    def parameters_dict(self) -> Params:
        return self.params

    def architecture(self) -> dict[str, object]:
        return {"source": "zoo", **self.spec.model_dump()}


# ----------------------------------------------------------------------------------------------- any nn.Module
@dataclass
class _Point:
    """Where one hook point's units are read: a module, which output, which dimension holds the units."""

    name: str
    module: str
    kind: NeuronKind = NeuronKind.HIDDEN
    unit_dim: int = -1
    recurrent: bool = False  # read out[0]; nn.RNN-style [L, B, H] unless the module is batch_first
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None  # e.g. head write norms; no interventions then
    n_units: int = 0
    fan_in: int = 0
    calls: int = 0


@dataclass
class _Run:
    """State of one forward pass: which points recorded what, and what replaces their units."""

    cache: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    interventions: Interventions = field(default_factory=dict)
    record: bool = False


def _is_hooked_transformer(module: nn.Module) -> bool:
    return type(module).__name__ == "HookedTransformer" and hasattr(module, "hook_dict") and hasattr(module, "blocks")


def _fan_in(module: nn.Module) -> int:
    """How many inputs feed one unit of a weighted module (0 when not meaningful)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.modules.conv._ConvNd):
        k = 1
        for s in module.kernel_size:
            k *= s
        return module.in_channels // module.groups * k
    if isinstance(module, RECURRENT):
        return module.input_size + module.hidden_size
    return 0


class ModuleSubject(Subject):
    """Any ``nn.Module`` from tokens [N, L] to logits, read through forward hooks (see the module doc)."""

    def __init__(self, module: nn.Module, name: str = "model", vocab: int | None = None, length: int | None = None,
                 hook_modules: Sequence[str] | None = None, source: dict[str, object] | None = None) -> None:
        self.module, self.name = module.eval(), name
        self.vocab, self.length = vocab, length
        self.source = dict(source or {})
        self._run = _Run()
        self._points = self._choose_points(hook_modules)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._install()
        self._discovered: list[HookPoint] | None = None

    # -- which units --------------------------------------------------------------------------------------------
    def _choose_points(self, hook_modules: Sequence[str] | None) -> list[_Point]:
        named = dict(self.module.named_modules())
        if hook_modules:
            missing = [m for m in hook_modules if m not in named]
            if missing:
                raise AdapterError(f"{self.name}: no module named {missing[0]!r} (modules: {', '.join(list(named)[1:12])} ...)")
            return [self._point_for(m, named[m]) for m in hook_modules]
        if _is_hooked_transformer(self.module):
            return self._transformer_points()
        points = [self._point_for(n, m) for n, m in named.items() if isinstance(m, ACTIVATIONS + RECURRENT)]
        # a recurrent layer's own activations are internal; activation modules inside a recurrent module are not
        if not points:
            raise AdapterError(f"{self.name}: no activation or recurrent modules to read; name the modules to hook")
        return points

    def _point_for(self, name: str, module: nn.Module) -> _Point:
        if isinstance(module, RECURRENT):
            return _Point(name, name, recurrent=True, fan_in=_fan_in(module))
        return _Point(name, name)

    def _transformer_points(self) -> list[_Point]:
        model = self.module
        points = []
        for i, block in enumerate(model.blocks):
            w_o = block.attn.W_O  # [H, d_head, d_model]

            def head_norms(z: torch.Tensor, w_o: torch.Tensor = w_o) -> torch.Tensor:
                return torch.einsum("blhd,hdm->blhm", z, w_o.detach()).norm(dim=-1)  # [B, L, H]

            points.append(_Point(f"blocks.{i}.attn.hook_z", f"blocks.{i}.attn.hook_z", NeuronKind.HEAD,
                                 transform=head_norms, fan_in=model.cfg.d_model))
            if not getattr(model.cfg, "attn_only", False):
                points.append(_Point(f"blocks.{i}.mlp.hook_post", f"blocks.{i}.mlp.hook_post", fan_in=model.cfg.d_model))
        return points

    # -- hooks ----------------------------------------------------------------------------------------------------
    def _install(self) -> None:
        named = dict(self.module.named_modules())
        last_weighted: list[int] = [0]

        def track(mod: nn.Module, inp: object, out: object) -> None:
            fan = _fan_in(mod)
            if fan:
                last_weighted[0] = fan

        for mod in named.values():
            if _fan_in(mod):
                mod.register_forward_hook(track)
        for point in self._points:
            named[point.module].register_forward_hook(self._hook(point, last_weighted))

    def _hook(self, point: _Point, last_weighted: list[int]) -> Callable:
        def fn(mod: nn.Module, inp: object, out: object) -> object:
            run = self._run
            raw = out[0] if point.recurrent else out
            if not isinstance(raw, torch.Tensor):
                return None
            if point.recurrent and not getattr(mod, "batch_first", False) and raw.dim() == 3:
                units = raw.transpose(0, 1)  # [B, L, H]
            else:
                units = raw.movedim(point.unit_dim, -1) if point.unit_dim != -1 else raw
            if not point.fan_in:
                point.fan_in = last_weighted[0]
            if point.transform is not None:
                if run.record:
                    run.cache.setdefault(point.name, []).append(point.transform(units))
                return None
            if point.name in run.interventions:
                units = run.interventions[point.name](units.unsqueeze(0)).squeeze(0)
                new = units if point.unit_dim == -1 else units.movedim(-1, point.unit_dim)
                if point.recurrent and not getattr(mod, "batch_first", False) and raw.dim() == 3:
                    new = units.transpose(0, 1)
                if run.record:
                    run.cache.setdefault(point.name, []).append(units)
                return (new, *out[1:]) if point.recurrent else new
            if run.record:
                run.cache.setdefault(point.name, []).append(units)
            return None

        return fn

    def _set_unit_dims(self, tokens: torch.Tensor) -> None:
        """Conv-style activations hold their units (channels) in dim 1: find them by what feeds the activation."""
        named = dict(self.module.named_modules())
        order: list[nn.Module] = []
        handles = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in named.values()
                   if _fan_in(m) or m in [named[p.module] for p in self._points]]
        try:
            with torch.no_grad():
                self._call(tokens)
        finally:
            for h in handles:
                h.remove()
        previous: nn.Module | None = None
        by_module = {id(named[p.module]): p for p in self._points}
        for m in order:
            p = by_module.get(id(m))
            if p is not None and not p.recurrent and p.transform is None and isinstance(previous, nn.modules.conv._ConvNd):
                p.unit_dim = 1
            if _fan_in(m):
                previous = m

    # -- the Subject interface -----------------------------------------------------------------------------------
    def _call(self, tokens: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        try:
            # with params: the module's function at those weights (differentiable in them); hooks fire as usual
            out = self.module(tokens) if params is None else torch.func.functional_call(self.module, params, (tokens,))
        except AdapterError:
            raise
        except (RuntimeError, IndexError, ValueError, TypeError) as e:
            raise AdapterError(f"{self.name}: the model fails on token ids [{len(tokens)}, {tokens.shape[1]}]: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if isinstance(out, tuple) and len(out) and isinstance(out[0], torch.Tensor):
            out = out[0]
        if _is_hooked_transformer(self.module) and isinstance(out, torch.Tensor) and out.dim() == 3:
            out = out[:, -1]  # a HookedTransformer's sequence logit is its last position's ([N, L, d_vocab_out])
        return logit_of(self.name, out, len(tokens))

    def hook_points(self) -> list[HookPoint]:
        if self._discovered is None:
            length = self.length or self.max_length
            if length is None:
                raise AdapterError(f"{self.name}: sequence length unknown; give it (length in the arguments) or read "
                                   "it through a probe set")
            probe = torch.zeros(2, length, dtype=torch.int64)
            self._set_unit_dims(probe)
            cache: Cache = {}
            self.forward(probe, cache=cache)
            points = []
            for p in self._points:
                if p.name not in cache:
                    continue  # a module the forward never calls
                points.append(HookPoint(p.name, len(points), int(cache[p.name].shape[-1]), p.kind, p.fan_in))
            if not points:
                raise AdapterError(f"{self.name}: none of the hooked modules ran in the forward pass")
            self._discovered = points + [HookPoint("output", len(points), 1, NeuronKind.OUTPUT, points[-1].fan_in)]
        return self._discovered

    def forward(self, tokens: torch.Tensor, cache: Cache | None = None, interventions: Interventions | None = None,
                params: Params | None = None) -> torch.Tensor:
        self._run = _Run(record=cache is not None, interventions=dict(interventions or {}))
        try:
            logits = self._call(tokens, params)
        finally:
            recorded, self._run = self._run.cache, _Run()
        if cache is not None:
            for name, parts in recorded.items():
                act = parts[0] if len(parts) == 1 else torch.stack(parts, dim=1)  # repeated calls: one per position
                cache[name] = act.unsqueeze(0)
            cache["output"] = logits.view(1, -1, 1)
        return logits

    def parameters_dict(self) -> Params:
        return {k: v.detach()[None] for k, v in self.module.named_parameters()}

    def architecture(self) -> dict[str, object]:
        points = [p for p in self.hook_points() if p.kind != NeuronKind.OUTPUT]
        return {**self.source, "class": type(self.module).__name__, "hook_points": [p.name for p in points],
                "n_units": sum(p.n_neurons for p in points),
                "n_parameters": sum(v.numel() for v in self.module.parameters())}
