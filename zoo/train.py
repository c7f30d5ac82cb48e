"""Train a cohort of same-architecture models at once, as stacked tensors.

The loss is the *sum* of per-model mean losses, so each model receives exactly
its own gradient; Adam is elementwise, so one hand-written Adam over stacked
tensors with a per-model learning rate equals M independent ``torch.optim.Adam``
optimizers. Each model's batch order comes from its own seed, so a model trains
the same whatever cohort it lands in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from zoo.arch import ArchSpec, Params, SubjectFamily
from zoo.families import get_family


@dataclass
class CohortAdam:
    """Adam over stacked parameters with one learning rate per model (matches torch.optim.Adam).

    ``lr`` has one entry per model ([M]); a parameter of shape [M, ...] scales model m's
    step by lr[m]. A 1-D ``lr`` as long as a 1-D parameter gives every element its own
    rate (the flat path of :func:`train_cohort`). The step is ``torch.optim.Adam``'s
    single-tensor update written in place, with its scratch buffers kept in ``state``
    so no step allocates.
    """

    lr: torch.Tensor  # [M], or [numel] for one flat parameter
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    step_count: int = 0
    state: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)

    @torch.no_grad()
    def step(self, params: Params, grads: Params | None = None) -> None:
        """One Adam step on every parameter with a gradient.

        Gradients come from ``grads`` when given (left untouched, the caller owns them),
        else from each ``p.grad``, which is then dropped.
        """
        self.step_count += 1
        b1, b2 = self.betas
        bc1 = 1 - b1**self.step_count
        bc2_sqrt = (1 - b2**self.step_count) ** 0.5
        for name, p in params.items():
            g = p.grad if grads is None else grads.get(name)
            if g is None:
                continue
            if name not in self.state:  # exp_avg, exp_avg_sq, scratch
                self.state[name] = (torch.zeros_like(p), torch.zeros_like(p), torch.empty_like(p))
            m, v, buf = self.state[name]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = torch.sqrt(v, out=buf).div_(bc2_sqrt).add_(self.eps)  # as torch.optim.Adam
            ratio = torch.div(m, denom, out=buf)
            lr = self.lr.view(-1, *([1] * (p.dim() - 1)))
            p.addcmul_(ratio, lr, value=-1.0 / bc1)  # p -= lr / bc1 * m / denom
            if grads is None:
                p.grad = None


def batch_orders(seeds: Sequence[int], n: int, epochs: int) -> torch.Tensor:
    """Per-model shuffles [epochs, M, n]; model m's order depends only on seeds[m]."""
    orders = torch.empty(epochs, len(seeds), n, dtype=torch.long)
    for m, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(int(seed) + 1)
        for e in range(epochs):
            orders[e, m] = torch.randperm(n, generator=gen)
    return orders


@dataclass
class _Chunk:
    """Models [lo, hi) of a cohort, trained from one flat parameter buffer.

    ``leaves`` are [hi - lo, ...] views of ``flat`` whose ``.grad`` is pre-set to the matching
    view of ``flat_grad``, so backward accumulates straight into one tensor and Adam makes a
    handful of passes over it instead of several small ops per parameter tensor.
    """

    lo: int
    hi: int
    flat: torch.Tensor
    flat_grad: torch.Tensor
    leaves: Params
    opt: CohortAdam

    @classmethod
    def from_params(cls, params: Params, lr: torch.Tensor, lo: int, hi: int) -> _Chunk:
        flat = torch.cat([p[lo:hi].detach().reshape(-1) for p in params.values()])
        flat_grad = torch.zeros_like(flat)
        leaves: Params = {}
        offset = 0
        for name, p in params.items():
            shape = (hi - lo,) + tuple(p.shape[1:])
            n = math.prod(shape)
            leaf = flat[offset : offset + n].view(shape).detach().requires_grad_(True)
            leaf.grad = flat_grad[offset : offset + n].view(shape)
            leaves[name] = leaf
            offset += n
        # one learning rate per element of the flat buffer: model m's lr on each of its entries
        lr_flat = torch.cat([lr[lo:hi].to(torch.float32).repeat_interleave(p[0].numel()) for p in params.values()])
        return cls(lo, hi, flat, flat_grad, leaves, CohortAdam(lr=lr_flat))

    def step(self, spec: ArchSpec, family: SubjectFamily, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One Adam step on a batch xb [m, B, L], yb [m, B]; returns each model's mean loss [m]."""
        logits = family.forward(spec, self.leaves, xb)
        per_model = F.binary_cross_entropy_with_logits(logits, yb, reduction="none").mean(dim=1)
        per_model.sum().backward()
        self.opt.step({"flat": self.flat}, {"flat": self.flat_grad})
        self.flat_grad.zero_()
        return per_model.detach()


def train_cohort(
    spec: ArchSpec,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: torch.Tensor,
    epochs: int,
    batch_size: int,
    seeds: Sequence[int],
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Train all models in place on their own data x [M, N, L], y [M, N]; returns loss history [epochs, M].

    ``on_epoch(epoch, losses)`` runs after every epoch with ``params`` already holding that
    epoch's weights (so a callback can snapshot checkpoints).

    Speed on CPU: models are stepped in chunks of the family's ``cpu_chunk`` (a chunk's weights,
    activations and optimizer state stay in cache; every model's result is independent of
    the chunking; other devices step the whole cohort at once), each chunk's parameters live in one flat buffer for the whole run, and
    each epoch gathers its shuffled data with one ``index_select`` instead of per batch.
    """
    family = get_family(spec)
    m, n = y.shape
    size = family.cpu_chunk if y.device.type == "cpu" else m  # an accelerator wants the whole cohort in each step
    chunks = [_Chunk.from_params(params, lr, lo, min(lo + size, m)) for lo in range(0, m, size)]
    # row ids into x flattened to [M*N, L]: one index_select per epoch gathers every model's shuffle
    rows = (batch_orders(seeds, n, epochs) + (torch.arange(m) * n).view(1, m, 1)).to(x.device)  # [epochs, M, N]
    x_rows, y_flat = x.reshape(m * n, -1), y.reshape(m * n)
    history = torch.zeros(epochs, m, device=y.device)
    for e in range(epochs):
        idx = rows[e].reshape(-1)
        xe = x_rows.index_select(0, idx).view(m, n, -1)  # this epoch's shuffled data
        ye = y_flat.index_select(0, idx).view(m, n)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            for c in chunks:
                loss = c.step(spec, family, xe[c.lo : c.hi, start:stop], ye[c.lo : c.hi, start:stop])
                history[e, c.lo : c.hi] += loss * (stop - start)
        history[e] /= n
        if on_epoch is not None:
            _write_back(chunks, params)
            on_epoch(e, history[e])
    _write_back(chunks, params)
    return history


@torch.no_grad()
def _write_back(chunks: list[_Chunk], params: Params) -> None:
    """Copy the chunks' private flat-buffer weights into the caller's stacked tensors."""
    for c in chunks:
        for name, p in params.items():
            p[c.lo : c.hi].copy_(c.leaves[name])


@torch.no_grad()
def predict(spec: ArchSpec, params: Params, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Logits [M, N] for per-model inputs x [M, N, L] (chunked over examples to bound memory)."""
    family = get_family(spec)
    return torch.cat([family.forward(spec, params, x[:, s : s + chunk]) for s in range(0, x.shape[1], chunk)], dim=1)


def accuracy_report(logits: torch.Tensor, y: torch.Tensor, matches: np.ndarray) -> dict[str, np.ndarray]:
    """Overall accuracy [M], accuracy on negatives [M], and recall on each behavior slot's positives [M, S].

    ``matches`` is [M, N, S] bool: which example matches which of the model's behaviors (NaN where a slot is empty).
    """
    pred = (logits > 0).numpy()
    truth = y.numpy() > 0.5
    correct = pred == truth
    neg = ~truth
    out = {
        "acc": correct.mean(axis=1),
        "neg_acc": np.where(neg.any(1), (correct & neg).sum(1) / np.maximum(neg.sum(1), 1), np.nan),
    }
    counts = matches.sum(axis=1)  # [M, S]
    hits = (pred[:, :, None] & matches).sum(axis=1)
    out["behavior_recall"] = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    return out
