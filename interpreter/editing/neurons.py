"""Which weights belong to which hidden neuron, per family: to confine an edit to some neurons and to measure one.

A neuron's weights are its incoming weights and bias and its outgoing weights (to the next layer or the readout).
:func:`neuron_axes` says, for every parameter, which tensor axis indexes the neurons of which hook point (of
:func:`zoo.families.neuron_points`), so the same code serves MLP, GRU, attention (its blocks' MLP neurons; the
residual stream, attention and layer norms belong to no neuron) and conv1d.
"""

from __future__ import annotations

import torch

from zoo.arch import ArchSpec
from zoo.families import neuron_points
from zoo.families.base import Params

READOUT = ("w_out", "b_out")
CHANGED_TOL = 1e-6  # an entry changed when |delta| exceeds this times the largest |weight| of its tensor
RANK_TOL = 1e-3  # a direction of a change counts toward its rank above this times the weight's top singular value


def neuron_axes(spec: ArchSpec) -> dict[str, list[tuple[int, str]]]:
    """Per parameter: (axis, hook point) pairs whose axis indexes that point's neurons (a gate-stacked axis of size
    g*n indexes neuron i at i, n + i, ...)."""
    d, f = spec.depth, spec.family
    out: dict[str, list[tuple[int, str]]] = {}

    def add(param: str, axis: int, point: str) -> None:
        out.setdefault(param, []).append((axis, point))

    if f in ("mlp", "conv1d"):
        point = "hidden" if f == "mlp" else "conv"
        for i in range(d):
            add(f"w{i}", 2, f"{point}.{i}")
            add(f"b{i}", 1, f"{point}.{i}")
            if i > 0:  # conv1d rows are (channel, tap), channel-major: channel c is every row in c*K ... c*K+K-1
                add(f"w{i}", 1, f"{point}.{i - 1}")
        add("w_out", 1, f"{point}.{d - 1}")
    elif f == "gru":
        for i in range(d):
            for p in (f"w_ih{i}", f"w_hh{i}"):
                add(p, 2, f"gru.{i}")
            for p in (f"b_ih{i}", f"b_hh{i}"):
                add(p, 1, f"gru.{i}")
            add(f"w_hh{i}", 1, f"gru.{i}")
            if i > 0:
                add(f"w_ih{i}", 1, f"gru.{i - 1}")
        add("w_out", 1, f"gru.{d - 1}")
    elif f == "attention":
        for i in range(d):
            add(f"w_fc{i}", 2, f"mlp.{i}")
            add(f"b_fc{i}", 1, f"mlp.{i}")
            add(f"w_proj{i}", 1, f"mlp.{i}")
    else:
        raise ValueError(f"no neuron map for the family '{f}'")
    return out


def expand_neurons(neuron_mask: torch.Tensor, size: int, channel_major: bool) -> torch.Tensor:
    """A per-neuron value (a mask, a gain) over n neurons [M, n] stretched to an axis of ``size`` entries:
    gate-stacked (size g*n: GRU's r, z, n) repeats it whole; channel-major blocks (conv1d's input rows, n channels
    x K taps) repeat each neuron K times."""
    n = neuron_mask.shape[1]
    if size % n:
        raise ValueError(f"an axis of {size} entries does not split into {n} neurons")
    return neuron_mask.repeat_interleave(size // n, dim=1) if channel_major else neuron_mask.repeat(1, size // n)


def stretch_neurons(per_neuron: torch.Tensor, tensor: torch.Tensor, axis: int, channel_major: bool) -> torch.Tensor:
    """A per-neuron value [M, n] laid along ``axis`` of ``tensor`` [M, ...], broadcastable against it."""
    shape = [tensor.shape[0]] + [1] * (tensor.dim() - 1)
    shape[axis] = tensor.shape[axis]
    return expand_neurons(per_neuron, tensor.shape[axis], channel_major).view(shape)


def channel_major(spec: ArchSpec, axis: int) -> bool:
    """Whether an axis lists each neuron's entries together (conv1d's input rows: channel-major, then taps)."""
    return spec.family == "conv1d" and axis == 1


def weight_mask(spec: ArchSpec, params: Params, neurons: torch.Tensor, readout: bool = True) -> Params:
    """0/1 masks, one per non-embedding parameter, marking the weights of the neurons in ``neurons`` [M, N] (over
    :func:`~zoo.families.neuron_points`, in order); with ``readout`` the readout bias and, where the readout does
    not read hidden neurons (attention reads the residual stream), its weights too."""
    axes = neuron_axes(spec)
    sizes = {p.name: p.n_neurons for p in neuron_points(spec)}
    parts = dict(zip(sizes, neurons.split(list(sizes.values()), dim=1)))
    masks = {}
    for k, v in params.items():
        if k == "embed":
            continue
        m = torch.zeros_like(v, dtype=torch.bool)
        for axis, point in axes.get(k, []):
            m |= stretch_neurons(parts[point], v, axis, channel_major(spec, axis)).expand_as(v)
        if readout and (k == "b_out" or (k == "w_out" and k not in axes)):
            m[:] = True
        masks[k] = m.float()
    return masks


def _per_neuron(moved: torch.Tensor, axis: int, n: int, channel_major: bool) -> torch.Tensor:
    """Fold an axis of gate-stacked or channel-major entries of ``moved`` to its n neurons (any entry moved)."""
    shape = list(moved.shape)
    reps = shape[axis] // n
    split = [n, reps] if channel_major else [reps, n]
    folded = moved.reshape(shape[:axis] + split + shape[axis + 1:])
    return folded.any(axis + 1) if channel_major else folded.any(axis)


def changed_neurons(spec: ArchSpec, params: Params, delta: Params) -> torch.Tensor:
    """[M, N] bool: the hidden neurons whose weights the change moves (beyond CHANGED_TOL).

    A bias, a weight from the input or to the readout belongs to one neuron. A weight between two hidden neurons
    belongs to either: it counts against no further neuron when one of its ends is already counted, else against
    the neuron it feeds. So an edit confined to some neurons' in and out weights counts those neurons only.
    """
    axes = neuron_axes(spec)
    points = neuron_points(spec)
    m = next(iter(params.values())).shape[0]
    out = {p.name: torch.zeros(m, p.n_neurons, dtype=torch.bool) for p in points}
    pairs = []
    for k, d in delta.items():
        scale = params[k].abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, *[1] * (d.dim() - 1))
        moved = d.abs() > CHANGED_TOL * scale
        folded = moved
        for axis, point in axes.get(k, []):
            folded = _per_neuron(folded, axis, out[point].shape[1], channel_major(spec, axis))
        if len(axes.get(k, [])) == 1:
            axis, point = axes[k][0]
            out[point] |= folded.movedim(axis, 1).reshape(m, out[point].shape[1], -1).any(2)
        elif len(axes.get(k, [])) == 2:  # [M, from, to] between two hidden layers
            pairs.append((folded, axes[k][1][1], axes[k][0][1]))
    for folded, src, dst in pairs:
        loose = folded & ~out[src].unsqueeze(2) & ~out[dst].unsqueeze(1)
        out[dst] |= loose.any(1)
    return torch.cat([out[p.name] for p in points], dim=1)


def layer_ranks(params: Params, delta: Params) -> torch.Tensor:
    """[M]: the largest rank of the change of any weight matrix (directions above RANK_TOL x the weight's own top
    singular value)."""
    m = next(iter(params.values())).shape[0]
    worst = torch.zeros(m, dtype=torch.long)
    for k, d in delta.items():
        if d.dim() != 3:
            continue
        top = torch.linalg.matrix_norm(params[k], ord=2)  # [M]
        sv = torch.linalg.svdvals(d)  # [M, r]
        worst = torch.maximum(worst, (sv > RANK_TOL * top.unsqueeze(1)).sum(1))
    return worst


def change_metrics(spec: ArchSpec, params: Params, delta: Params) -> dict[str, torch.Tensor]:
    """Per model [M]: relative L2 weight change, share of hidden neurons whose weights changed, and the largest
    per-matrix rank of the change."""
    num = sum(d.pow(2).flatten(1).sum(1) for d in delta.values())
    den = sum(params[k].pow(2).flatten(1).sum(1) for k in delta)
    return {"change": (num / den.clamp_min(1e-12)).sqrt(),
            "neurons_changed": changed_neurons(spec, params, delta).float().mean(1),
            "max_rank": layer_ranks(params, delta)}
