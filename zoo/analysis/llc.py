"""Local learning coefficient (LLC) by SGLD, and the closed-form values used to validate it.

The LLC ``lambda(w*)`` measures how degenerate the loss landscape is around a parameter
``w*``: the tempered posterior localized at ``w*`` has volume scaling like ``t^-lambda``
at inverse temperature ``t = n * beta``. Lau et al. (2023) estimate it as

    lambda_hat = n * beta * (E_w[L_n(w)] - L_n(w*)),   beta = 1 / log n,

where ``w`` is drawn by SGLD from ``exp(-n beta L_n(w) - gamma/2 |w - w*|^2)``. The
estimator here runs every chain of every model as one stacked tensor ``[M * C, ...]``
(the families' layout), so a whole cohort's LLC costs one batched SGLD run.

devinterp (the reference implementation) pulls in transformers/datasets/zarr and wants an
``nn.Module`` and a DataLoader; the stacked functional families fit neither, so this is
an own estimator, validated against reduced-rank regression (Aoyagi & Watanabe 2005)
and deep linear networks (Aoyagi 2024) in ``docs/results/llc_validation.md``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from zoo.arch import ArchSpec
from zoo.families import get_family
from zoo.families.base import Params
from zoo.train import train_cohort

# loss_fn(params [M*C, ...], step) -> per-model mean loss [M*C] (the step lets it pick a minibatch)
LossFn = Callable[[Params, int], torch.Tensor]


class SGLDConfig(BaseModel):
    """SGLD sampler settings. ``lr`` is the step size epsilon, ``gamma`` the localization strength.

    ``beta`` defaults to 1/log(n) (the WBIC temperature); the estimate averages the loss over
    the ``steps - burnin`` draws after burn-in, over ``chains`` independent chains per model.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(1e-4, gt=0.0)
    gamma: float = Field(100.0, ge=0.0)
    steps: int = Field(2000, ge=1)
    burnin: int = Field(500, ge=0)
    chains: int = Field(4, ge=1)
    beta: float | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _draws_left(self) -> SGLDConfig:
        if self.burnin >= self.steps:
            raise ValueError(f"burnin {self.burnin} leaves no draws of {self.steps} steps")
        return self


@dataclass
class LLCResult:
    """Per-model LLC estimate (mean over chains), its chain std, and the loss trace [steps, M, C]."""

    llc: torch.Tensor  # [M]
    llc_std: torch.Tensor  # [M]
    init_loss: torch.Tensor  # [M]
    trace: torch.Tensor  # [steps, M, C]


def estimate_llc(loss_fn: LossFn, w_star: Params, n: int, cfg: SGLDConfig = SGLDConfig()) -> LLCResult:
    """Estimate the LLC of every model of a stacked parameter dict ``w_star`` ([M, ...]) by SGLD.

    ``loss_fn`` gets ``M * C`` stacked models (each model repeated ``C = cfg.chains`` times,
    consecutive) and returns each one's mean negative log-likelihood per example; ``n`` is
    the training-set size the loss is an average over. The update is

        w <- w - eps/2 * (n beta grad L(w) + gamma (w - w*)) + N(0, eps).
    """
    beta = cfg.beta if cfg.beta is not None else 1.0 / math.log(n)
    c = cfg.chains
    center = {k: v.detach().repeat_interleave(c, 0) for k, v in w_star.items()}
    m = next(iter(w_star.values())).shape[0]
    gen = torch.Generator(device=center[next(iter(center))].device).manual_seed(cfg.seed)
    w = {k: v.clone().requires_grad_(True) for k, v in center.items()}
    with torch.no_grad():
        init_loss = loss_fn(center, 0).view(m, c)[:, 0]
    trace = torch.zeros(cfg.steps, m, c)
    for step in range(cfg.steps):
        loss = loss_fn(w, step)
        grads = torch.autograd.grad(loss.sum(), list(w.values()))
        with torch.no_grad():
            for (name, p), g in zip(w.items(), grads):
                drift = n * beta * g + cfg.gamma * (p - center[name])
                noise = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
                p.add_(-0.5 * cfg.lr * drift + math.sqrt(cfg.lr) * noise)
        trace[step] = loss.detach().view(m, c).float().cpu()
    draws = trace[cfg.burnin :].mean(dim=0)  # [M, C]
    per_chain = n * beta * (draws - init_loss.view(m, 1).float().cpu())
    return LLCResult(per_chain.mean(dim=1), per_chain.std(dim=1) if c > 1 else torch.zeros(m), init_loss.cpu(), trace)


# ----------------------------------------------------------------------------- subject models
def subject_loss_fn(spec: ArchSpec, x: torch.Tensor, y: torch.Tensor, chains: int, batch_size: int | None = None,
                    seed: int = 0) -> LossFn:
    """The BCE loss of family models on their own data x [M, N, L], y [M, N], for ``chains`` copies of each.

    Full batch when ``batch_size`` is None (subject datasets are small); otherwise a seeded
    minibatch per step, the same rows for every chain.
    """
    family = get_family(spec)
    xc, yc = x.repeat_interleave(chains, 0), y.repeat_interleave(chains, 0)
    n = y.shape[1]
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(params: Params, step: int) -> torch.Tensor:
        xb, yb = xc, yc
        if batch_size is not None and batch_size < n:
            idx = torch.randint(0, n, (batch_size,), generator=gen).to(x.device)
            xb, yb = xc[:, idx], yc[:, idx]
        logits = family.forward(spec, params, xb)
        return F.binary_cross_entropy_with_logits(logits, yb, reduction="none").mean(dim=1)

    return loss_fn


def subject_llc(spec: ArchSpec, params: Params, x: torch.Tensor, y: torch.Tensor, cfg: SGLDConfig = SGLDConfig(),
                batch_size: int | None = None) -> LLCResult:
    """LLC of every model of a cohort at its trained weights, on its own training data."""
    return estimate_llc(subject_loss_fn(spec, x, y, cfg.chains, batch_size, cfg.seed), params, y.shape[1], cfg)


def train_with_checkpoints(spec: ArchSpec, params: Params, x: torch.Tensor, y: torch.Tensor, epochs: int,
                           lr: float = 1e-2, batch_size: int = 64, seed: int = 0,
                           every: int = 1) -> list[tuple[int, Params]]:
    """Train a cohort with the zoo's own trainer and snapshot its weights every ``every`` epochs.

    Returns [(epoch, params)], epoch 0 being the initialization; model m's batch order comes from seed + m.
    """
    w = {k: v.detach().clone() for k, v in params.items()}
    snaps = [(0, {k: v.clone() for k, v in w.items()})]

    def snapshot(epoch: int, _losses: torch.Tensor) -> None:
        if (epoch + 1) % every == 0 or epoch + 1 == epochs:
            snaps.append((epoch + 1, {k: v.clone() for k, v in w.items()}))

    m = y.shape[0]
    train_cohort(spec, w, x, y, torch.full((m,), lr), epochs, batch_size, [seed + i for i in range(m)], on_epoch=snapshot)
    return snaps


# ----------------------------------------------------------------------------- known values
def rrr_learning_coefficient(m_in: int, h: int, n_out: int, r: int) -> tuple[float, int]:
    """RLCT and multiplicity of reduced-rank regression y = B A x (A: h x m_in, B: n_out x h), true rank r.

    Aoyagi & Watanabe (2005), "Stochastic complexities of reduced rank regression in
    Bayesian estimation", Main Theorem (M inputs, N outputs, H hidden, true rank r).
    """
    M, N, H = m_in, n_out, h
    if N + r <= M + H and M + r <= N + H and H + r <= M + N:
        base = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
        if (M + H + N + r) % 2 == 0:
            return base / 8, 1
        return (base + 1) / 8, 2
    if M + H < N + r:
        return (H * M - H * r + N * r) / 2, 1
    if N + H < M + r:
        return (H * N - H * r + M * r) / 2, 1
    return M * N / 2, 1  # M + N < H + r


def dln_learning_coefficient(widths: Sequence[int], r: int) -> float:
    """RLCT of a deep linear network with layer widths (input, hidden..., output) and true rank r.

    Aoyagi (2024), "Consideration on the learning efficiency of multiple-layered neural
    networks with linear units", Theorem 1: with ``M_j = H_j - r``, find the subset S of
    size l+1 whose members are all smaller than the rest and satisfy
    ``sum(S) >= l * max(S)`` and ``sum(S) < l * min(rest)``; then with
    ``a = sum(S) - (ceil(sum(S)/l) - 1) * l``,

        lambda = (-r^2 + r (H_1 + H_{L+1})) / 2 + a (l - a) / (4 l)
                 - l (l - 1) / 4 * (sum(S)/l)^2 + 1/2 * sum_{i<j in S} M_i M_j.
    """
    ms = np.array(widths) - r
    chosen = None
    for size in range(1, len(ms) + 1):
        for subset in itertools.combinations(range(len(ms)), size):
            s = ms[list(subset)]
            rest = np.delete(ms, list(subset))
            ell = len(s) - 1
            if len(rest) and not s.max() < rest.min():
                continue
            if not s.sum() >= ell * s.max():
                continue
            if len(rest) and not s.sum() < ell * rest.min():
                continue
            chosen = s
            break
        if chosen is not None:
            break
    if chosen is None or len(chosen) < 2:
        raise ValueError(f"no admissible subset for widths {list(widths)}, rank {r}")
    total, ell = float(chosen.sum()), len(chosen) - 1
    a = total - (math.ceil(total / ell) - 1) * ell
    pairs = sum(chosen[i] * chosen[j] for i in range(ell + 1) for j in range(i + 1, ell + 1))
    return ((-r * r + r * (widths[0] + widths[-1])) / 2 + a * (ell - a) / (4 * ell)
            - ell * (ell - 1) / 4 * (total / ell) ** 2 + pairs / 2)


@dataclass
class LinearTask:
    """A deep linear network teacher and the sufficient statistics of n Gaussian samples from it.

    With y = W0 x + noise (unit variance), the mean NLL of a network with product matrix W
    is ``0.5 * tr(W Sxx W^T) - tr(W Sxy) + 0.5 * tr(Syy)`` (+ a constant), so the exact
    empirical loss of any n costs O(d^2), not O(n d): validation can use n = 10^5 samples.
    """

    widths: tuple[int, ...]
    rank: int
    n: int
    teacher: list[torch.Tensor]  # per layer [in, out], extra components zero (the most singular true point)
    sxx: torch.Tensor
    sxy: torch.Tensor
    syy: torch.Tensor


def make_linear_task(widths: Sequence[int], rank: int, n: int, seed: int = 0) -> LinearTask:
    """Teacher of true rank ``rank`` written in the network's own parameters, with its data statistics."""
    gen = torch.Generator().manual_seed(seed)
    widths = tuple(int(w) for w in widths)
    teacher = []
    for a, b in zip(widths[:-1], widths[1:]):
        w = torch.zeros(a, b, dtype=torch.float64)
        w[:rank, :rank] = torch.randn(rank, rank, generator=gen, dtype=torch.float64) / math.sqrt(rank) + torch.eye(rank, dtype=torch.float64)
        teacher.append(w)
    # rotate input and output so the teacher is not axis-aligned there
    q_in = torch.linalg.qr(torch.randn(widths[0], widths[0], generator=gen, dtype=torch.float64))[0]
    q_out = torch.linalg.qr(torch.randn(widths[-1], widths[-1], generator=gen, dtype=torch.float64))[0]
    teacher[0] = q_in @ teacher[0]
    teacher[-1] = teacher[-1] @ q_out
    w0 = teacher[0]
    for w in teacher[1:]:
        w0 = w0 @ w
    x = torch.randn(n, widths[0], generator=gen, dtype=torch.float64)
    y = x @ w0 + torch.randn(n, widths[-1], generator=gen, dtype=torch.float64)
    return LinearTask(widths, rank, n, teacher, x.T @ x / n, x.T @ y / n, y.T @ y / n)


def linear_loss_fn(task: LinearTask) -> LossFn:
    """Exact empirical mean NLL of stacked deep linear networks (params ``w0``.. ``w{L-1}``, each [C, in, out])."""

    def loss_fn(params: Params, step: int) -> torch.Tensor:
        w = params["w0"]
        for i in range(1, len(task.widths) - 1):
            w = w @ params[f"w{i}"]
        quad = torch.einsum("cij,ik,ckj->c", w, task.sxx, w)
        cross = torch.einsum("cij,ij->c", w, task.sxy)
        return 0.5 * quad - cross + 0.5 * torch.trace(task.syy)

    return loss_fn


def fit_linear(task: LinearTask, steps: int = 3000, lr: float = 0.01) -> Params:
    """The empirical minimizer near the teacher: Adam on the exact loss, started at the teacher's weights."""
    w = {f"w{i}": t.clone().unsqueeze(0).requires_grad_(True) for i, t in enumerate(task.teacher)}
    opt = torch.optim.Adam(list(w.values()), lr=lr)
    loss_fn = linear_loss_fn(task)
    for step in range(steps):
        opt.zero_grad()
        loss_fn(w, step).sum().backward()
        opt.step()
    return {k: v.detach() for k, v in w.items()}
