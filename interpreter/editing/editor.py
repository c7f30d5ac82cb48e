"""The editor: add or remove a behavior, or repair one, by decoding a latent edit into weight changes.

An edit reads only the subject model's weights and signature. The frozen interpreter turns the
signature into neuron tokens and a model latent; an edit code (operation + behavior embedding)
joins the latent; the neuron-aligned decoder (:mod:`interpreter.editing.decoder`) turns tokens and code
into a change of every weight (MLP family). The guided edit (:func:`guided_edit`) decodes by
optimization instead and needs only the batched forward, so it edits every family. Repair is
"add B" for the behavior that looks corrupted: read by the interpreter as trained, yet not flagged
(:meth:`Encoded.corrupted_behavior`).

Training is against what the edited weights *do*: the edited cohort runs through the batched
functional forward on sequences drawn from a :class:`~zoo.behavior_bank.BehaviorBank`, with
targets "flag any of the model's behaviors, with B added / removed". Labels of the training zoo
are used only here, never at edit time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from interpreter.batch import collate
from interpreter.editing.decoder import NeuronAlignedDecoder, add_delta
from interpreter.editing.protocol import FPR_TOL, KEEP_TOL, flags_on, judge, rates_from_flags
from interpreter.model import LoadedInterpreter
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.families import get_family
from zoo.families.base import Params
from zoo.probes import ProbeSet
from zoo.signatures import cohort_signatures

OPS = ("add", "remove")
WEIGHTS_FILE = "editor.safetensors"
META_FILE = "editor.json"


class EditorConfig(BaseModel):
    """Size and training schedule of the editor (the interpreter it reads stays frozen)."""

    model_config = ConfigDict(extra="forbid")

    d_hidden: int = Field(128, ge=8)
    rank: int = Field(8, ge=1)
    code_dim: int = Field(32, ge=1)
    steps: int = Field(3000, ge=1)
    batch_models: int = Field(64, ge=1)
    examples_per_model: int = Field(256, ge=8)
    lr: float = Field(3e-4, gt=0, description="a shared decoder moves every neuron at once: larger rates kill the subject's ReLUs")
    change_penalty: float = Field(1e-2, ge=0, description="weight of the relative squared size of the change")
    bank_per_behavior: int = Field(
        32000, ge=10, description="training-bank sequences per behavior and kind; edits overfit a small bank: "
                                  "no_repeats has 53,760 positives and with 1,000 of them an add reached 0.62 on fresh ones")
    seed: int = 0


class Editor(nn.Module):
    """Edit codes and the neuron-aligned decoder."""

    def __init__(self, cfg: EditorConfig, behaviors: Sequence[str], d_token: int, latent_dim: int, vocab: int) -> None:
        super().__init__()
        self.cfg, self.behaviors = cfg, list(behaviors)
        self.d_token, self.latent_dim, self.vocab = d_token, latent_dim, vocab
        k = len(self.behaviors)
        # initial weights from cfg.seed alone, not from whatever the process drew before (a reused Ray worker)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.op_emb = nn.Embedding(len(OPS), cfg.code_dim)
            self.behavior_emb = nn.Embedding(k, cfg.code_dim)
            d_cond = latent_dim + 2 * k + cfg.code_dim
            self.decoder = NeuronAlignedDecoder(d_token, d_cond, vocab, cfg.d_hidden, cfg.rank)
        # what models trained on each behavior typically flag (set from the training models; see corrupted_behavior)
        self.register_buffer("typical_profile", torch.ones(k), persistent=False)

    def delta(self, spec: ArchSpec, params: Params, enc: Encoded, op: torch.Tensor, behavior: torch.Tensor) -> Params:
        """Weight changes for edits (op [B], behavior [B] ids) of the encoded models."""
        code = self.op_emb(op) + self.behavior_emb(behavior)
        return self.decoder(spec, params, enc.tokens, torch.cat([enc.summary(), code], dim=-1))

    def codes(self, ops: Sequence[str], behaviors: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Op and behavior ids for edit names ("repair" is coded as "add")."""
        return edit_codes(self.behaviors, ops, behaviors)


def code_op(op: str) -> str:
    """The operation an edit carries out: repair is "add B" for the behavior that looks corrupted."""
    return "add" if op == "repair" else op


def edit_codes(names: Sequence[str], ops: Sequence[str], behaviors: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Op ids [B] and behavior ids [B] (indices into ``names``) of edits, as the editors embed them."""
    return (torch.tensor([OPS.index(code_op(op)) for op in ops]), torch.tensor([names.index(b) for b in behaviors]))


@dataclass
class Encoded:
    """What the frozen interpreter says about a stack of same-architecture models."""

    tokens: torch.Tensor  # [B, N, d_model] neuron latents, in hook-point order
    latent: torch.Tensor  # [B, latent_dim]
    probs: torch.Tensor  # [B, K] behavior probabilities
    profile: torch.Tensor  # [B, K] share of each behavior's bank positives the model flags (a partial one looks corrupted)

    def select(self, idx: torch.Tensor) -> Encoded:
        return Encoded(*(getattr(self, f.name)[idx] for f in fields(self)))

    def summary(self) -> torch.Tensor:
        """Model-level reading [B, latent_dim + 2K]: latent, behavior probabilities and profile."""
        return torch.cat([self.latent, self.probs, self.profile], dim=-1)

    def corrupted_behavior(self, typical: torch.Tensor | None = None) -> torch.Tensor:
        """Per model, the behavior [B] that looks corrupted: read as trained by the interpreter, yet flagged less
        than models trained on it typically flag.

        argmax of P(trained on B) x max(0, typical_B - share of B's positives flagged), where ``typical`` [K] is
        :func:`typical_profile` of the training models (all ones when not given). On the edit zoo's training repair
        pairs this names 97% right (held out: 88%); the earlier P x (1 - share)^2 named 96% (held out: 83%): it
        kept naming behaviors no model flags fully, such as no_repeats.
        """
        typical = torch.ones_like(self.profile[0]) if typical is None else typical
        return (self.probs * (typical - self.profile).clamp_min(0)).argmax(dim=-1)


def typical_profile(profiles: torch.Tensor, behaviors: Sequence[Sequence[str]], names: Sequence[str]) -> torch.Tensor:
    """[K]: per behavior, the median share of its bank positives flagged by the models trained on it (1 if none).

    ``profiles`` [B, K] and ``behaviors`` (each model's set) should be clean models: a model with corrupted labels
    flags less, which is what the typical share is the yardstick for.
    """
    out = torch.ones(len(names))
    for k, name in enumerate(names):
        trained = [i for i, have in enumerate(behaviors) if name in have]
        if trained:
            out[k] = profiles[trained, k].median()
    return out


PROFILE_PER_BEHAVIOR = 64


@torch.no_grad()
def behavior_profile(spec: ArchSpec, params: Params, bank: BehaviorBank) -> torch.Tensor:
    """[B, K]: share of the first PROFILE_PER_BEHAVIOR bank positives of each behavior that each model flags."""
    rows = np.concatenate([p[:PROFILE_PER_BEHAVIOR] for p in bank.positives])
    flags = (get_family(spec).forward(spec, params, torch.from_numpy(bank.x[rows])) > 0).float()
    sizes = [min(len(p), PROFILE_PER_BEHAVIOR) for p in bank.positives]
    return torch.stack([part.mean(dim=1) for part in flags.split(sizes, dim=1)], dim=1)


@torch.no_grad()
def encode(interp: LoadedInterpreter, spec: ArchSpec, params: Params, probes: ProbeSet, bank: BehaviorBank,
           chunk: int = 256) -> Encoded:
    """Signatures of the stacked models read by the interpreter (eval mode, chunks of ``chunk`` models), and their profile."""
    parts = []
    n = next(iter(params.values())).shape[0]
    for lo in range(0, n, chunk):
        sub = {k: v[lo: lo + chunk] for k, v in params.items()}
        sig = cohort_signatures(spec, sub, probes)
        records = [{"features": sig["features"][m], "layer": sig["layer"], "rel_depth": sig["rel_depth"],
                    "kind": sig["kind"], "logits": sig["logits"][m]} for m in range(sig["features"].shape[0])]
        out = interp.model(collate(records, interp.scaler))
        parts.append(Encoded(out["neuron_latents"], out["latent"], torch.sigmoid(out["behavior_logits"]),
                             behavior_profile(spec, sub, bank)))
    return Encoded(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Encoded)))


@dataclass
class Pool:
    """Training models of one architecture: weights, interpreter reading, behavior sets and corrupted behavior."""

    spec: ArchSpec
    params: Params
    enc: Encoded
    behaviors: list[tuple[str, ...]]
    corrupted: list[str | None]


def plan_edit(rng: np.random.Generator, names: Sequence[str], behaviors: Sequence[str],
              corrupted: str | None) -> tuple[str, str]:
    """(op, behavior) for one training model: repair ("add") its corrupted behavior, else add or remove one at random."""
    if corrupted is not None:
        return "add", corrupted
    missing = [b for b in names if b not in behaviors]
    if missing and (rng.random() < 0.5 or not behaviors):
        return "add", missing[int(rng.integers(len(missing)))]
    return "remove", behaviors[int(rng.integers(len(behaviors)))]


def edit_targets(teacher: torch.Tensor, rows: np.ndarray, bank: BehaviorBank, ops: Sequence[str], behaviors: Sequence[str],
                 keep: Sequence[Sequence[str]]) -> torch.Tensor:
    """What each edited model should output on bank rows [B, n]: its own current probability ``teacher``, except on
    B's positives: 1 to add (or repair) B; 0 to remove B, unless the row also matches a behavior in ``keep``."""
    target = teacher.clone()
    for m, (op, b) in enumerate(zip(ops, behaviors)):
        hit = bank.labels(rows[m], [b])
        if op == "remove":
            hit &= ~bank.labels(rows[m], [k for k in keep[m] if k != b])
        target[m, torch.from_numpy(hit)] = 0.0 if op == "remove" else 1.0
    return target


def edit_batch(bank: BehaviorBank, rng: np.random.Generator, pool: Pool, idx: np.ndarray, n: int) -> dict:
    """Edit plans and data for models ``idx`` of a pool: rows [B, n] of the bank over each model's behaviors and B."""
    ops, chosen, rows = [], [], []
    for i in idx:
        op, b = plan_edit(rng, bank.names, pool.behaviors[i], pool.corrupted[i])
        ops.append(op)
        chosen.append(b)
        rows.append(bank.sample(rng, sorted(set(pool.behaviors[i]) | {b}), n))
    return {"rows": np.stack(rows), "ops": ops, "behaviors": chosen, "keep": [pool.behaviors[i] for i in idx]}


def change_size(params: Params, delta: Params) -> torch.Tensor:
    """Relative squared size of an edit per model: ||delta||^2 / ||weights||^2 over the decoded tensors [B]."""
    num = sum(d.pow(2).flatten(1).sum(1) for d in delta.values())
    den = sum(params[k].pow(2).flatten(1).sum(1) for k in delta)
    return num / den.clamp_min(1e-12)


def pick_models(rng: np.random.Generator, pools: Sequence[Pool], batch_models: int) -> tuple[Pool, np.ndarray]:
    """One training step's models: a pool drawn in proportion to its size, then up to ``batch_models`` of its models."""
    sizes = np.array([len(p.behaviors) for p in pools], dtype=float)
    pool = pools[int(rng.choice(len(pools), p=sizes / sizes.sum()))]
    return pool, rng.choice(len(pool.behaviors), size=min(batch_models, len(pool.behaviors)), replace=False)


def editor_step(opt: torch.optim.Optimizer, editor: nn.Module, spec: ArchSpec, params: Params, delta: Params,
                x: torch.Tensor, y: torch.Tensor, change_penalty: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training step of an editor against what its edited models do: BCE of the edited stack's logits on ``x``
    against ``y`` plus ``change_penalty`` times the relative squared change. Returns the logits, that BCE and the
    change sizes [B], detached."""
    logits = get_family(spec).forward(spec, add_delta(params, delta), x)
    fn_loss = F.binary_cross_entropy_with_logits(logits, y)
    size = change_size(params, delta)
    loss = fn_loss + change_penalty * size.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(editor.parameters(), 1.0)
    opt.step()
    return logits.detach(), fn_loss.detach(), size.detach()


def train_editor(editor: Editor, pools: Sequence[Pool], bank: BehaviorBank,
                 on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train the decoder and edit codes against what the edited models do (no pools: nothing to train on)."""
    cfg = editor.cfg
    if not pools:
        return []
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(editor.parameters(), lr=cfg.lr, weight_decay=1e-4)
    history = []
    editor.train()
    for step in range(cfg.steps):
        pool, idx = pick_models(rng, pools, cfg.batch_models)
        batch = edit_batch(bank, rng, pool, idx, cfg.examples_per_model)
        t = torch.from_numpy(idx)
        params, enc = {k: v[t] for k, v in pool.params.items()}, pool.enc.select(t)
        family, x = get_family(pool.spec), torch.from_numpy(bank.x[batch["rows"]])
        with torch.no_grad():
            y = edit_targets(torch.sigmoid(family.forward(pool.spec, params, x)), batch["rows"], bank, batch["ops"],
                             batch["behaviors"], batch["keep"])
        delta = editor.delta(pool.spec, params, enc, *editor.codes(batch["ops"], batch["behaviors"]))
        logits, fn_loss, size = editor_step(opt, editor, pool.spec, params, delta, x, y, cfg.change_penalty)
        acc = ((logits > 0) == (y > 0.5)).float().mean()
        row = {"loss": float(fn_loss), "acc": float(acc), "change": float(size.sqrt().mean())}
        history.append(row)
        if on_step is not None:
            on_step(step, row)
    editor.eval()
    return history


REFINE_UP = 2.0  # weight multiplier per refinement round on the part of an edit that missed its bar
SHRINK = 0.75  # each shrink round of a targeted edit asks for a change this much smaller
LEFT, RIGHT = "@left", "@right"  # a low-rank change's factors, keyed by their weight's name and these
FACTOR_INIT = 1e-2  # the left factor's scale where a low-rank change starts from zero
CHECK_MARGIN = 0.01  # the self-check asks this much more than the protocol, so edits pass on fresh sequences too
CHECK_PARTS = ("B's rate", "a kept behavior", "false positives")  # what failing_parts reports, in its column order


@dataclass(frozen=True)
class Confinement:
    """How a targeted edit is kept small.

    ``mask`` (0/1 per weight entry, as :func:`interpreter.editing.neurons.weight_mask` makes) confines it to the
    entries it marks; ``penalty`` adds that times its relative squared size to the loss; ``budget`` caps its relative
    L2 size (after every step a larger change is scaled back onto that sphere); ``shrink`` rounds follow a guided
    edit's self-check rounds, each asking every passing edit to pass again at SHRINK times its size (the smallest
    change that still passes is kept); with ``rank`` the change of each weight matrix is a product of two factors of
    that inner size (LoRA-style), every other tensor's change is free; ``span`` holds, for some weight matrices
    [M, n, out], an orthonormal basis [M, n, k] that their change is projected onto along axis 1 (the edit then acts
    only through a k-dimensional subspace of the n neurons that matrix reads, :mod:`interpreter.editing.subspace`).
    """

    mask: Params | None = None
    penalty: float = 0.0
    budget: float | torch.Tensor | None = None  # one for all models, or one per model [M]
    shrink: int = 0
    rank: int | None = None
    span: Params | None = None

    def free(self, delta: Params) -> Params:
        """The leaf tensors the optimizer moves, standing for the change ``delta``: its tensors, or with ``rank`` two
        factors [M, a, r] and [M, r, b] of each matrix's change (its truncated SVD; a zero change starts from an
        orthonormal left factor scaled by FACTOR_INIT and a zero right one, so the product is zero but not stuck)."""
        out = {}
        for k, d in delta.items():
            if self.rank is None or d.dim() != 3:
                out[k] = d.clone()
                continue
            u, sv, vh = torch.linalg.svd(d, full_matrices=False)
            root = sv[:, : self.rank].sqrt()
            out[k + LEFT] = u[:, :, : self.rank] * root.clamp_min(FACTOR_INIT).unsqueeze(1)
            out[k + RIGHT] = root.unsqueeze(2) * vh[:, : self.rank]
        return {k: v.requires_grad_(True) for k, v in out.items()}

    def select(self, idx: torch.Tensor) -> Confinement:
        """The same confinement for the models ``idx`` of the batch."""
        mask = None if self.mask is None else {k: v[idx] for k, v in self.mask.items()}
        span = None if self.span is None else {k: v[idx] for k, v in self.span.items()}
        budget = self.budget[idx] if isinstance(self.budget, torch.Tensor) else self.budget
        return replace(self, mask=mask, budget=budget, span=span)

    def apply(self, free: Params) -> Params:
        """The change the free tensors stand for (factors multiplied), masked where there is a mask, projected onto
        its span where there is one."""
        change = {k[: -len(LEFT)]: v @ free[k[: -len(LEFT)] + RIGHT] for k, v in free.items() if k.endswith(LEFT)}
        change.update({k: v for k, v in free.items() if not k.endswith((LEFT, RIGHT))})
        if self.mask is not None:
            change = {k: v * self.mask[k] for k, v in change.items()}
        for k, basis in (self.span or {}).items():
            change[k] = basis @ (basis.transpose(1, 2) @ change[k])
        return change


def guided_edit(spec: ArchSpec, params: Params, bank: BehaviorBank, ops: Sequence[str], behaviors: Sequence[str],
                keep: Sequence[Sequence[str]], steps: int, lr: float = 3e-3, n: int = 256, seed: int = 0,
                check: BehaviorBank | None = None, rounds: int = 0, labelled: bool = False,
                confine: Confinement | None = None) -> Params:
    """Decode edits by optimization: a change of every weight but the embedding, found by ``steps`` Adam steps
    against the edit targets (:func:`edit_targets`). Returns the change.

    It is fine-tuning with B's definition as the labeller on B's positives and the model's own outputs as
    targets everywhere else. No labels of the model are used: rows come from the bank (a quarter B's positives,
    a quarter over ``keep`` and B, half over every behavior), targets are the model's own outputs with B
    switched on or off, so whatever the model did before is what it is held to. With ``labelled`` the targets
    elsewhere are the definitions of ``keep`` instead (pass the model's assigned behaviors: the matched
    fine-tuning baseline, which uses the model's labels).

    With a ``check`` bank (other sequences than ``bank``), up to ``rounds`` refinement rounds follow. Each
    measures every edit against the protocol's bars on ``check``, taking the model's own flags before the edit
    as the reference (:func:`failing_parts`); the models that miss them continue from their change for half as
    many steps at half the step size, with REFINE_UP times the weight on each part they missed (B's positives,
    the kept behaviors' positives, the negatives).

    A :class:`Confinement` keeps the change small and where localization puts it (a targeted edit).
    """
    rng = np.random.default_rng(seed)
    confine = confine or Confinement()
    names = [k for k in params if k != "embed" and (confine.mask is None or k in confine.mask)]
    delta = {k: torch.zeros_like(params[k]) for k in names}
    delta = _optimize_edit(spec, params, delta, bank, ops, behaviors, keep, steps, lr, n, rng, labelled=labelled,
                           confine=confine)
    weights = torch.ones(len(ops), 3)
    if check is None or not rounds:
        return delta
    before = flags_on(spec, params, check)  # the reference, computed once
    fails = failing_parts(spec, params, delta, check, ops, behaviors, keep, before=before)
    for _ in range(rounds):
        bad = fails.any(dim=1).nonzero().flatten()
        if not len(bad):
            break
        weights[fails] *= REFINE_UP
        idx = bad.tolist()
        sub = {k: v[bad] for k, v in params.items()}
        picked = ([ops[i] for i in idx], [behaviors[i] for i in idx], [keep[i] for i in idx])
        refined = _optimize_edit(spec, sub, {k: v[bad] for k, v in delta.items()}, bank, *picked,
                                 max(1, steps // 2), lr / 2, n, rng, weights[bad], labelled, confine.select(bad))
        for k, v in refined.items():
            delta[k] = delta[k].index_copy(0, bad, v)
        fails[bad] = failing_parts(spec, sub, refined, check, *picked, before=before[bad])  # only these changed
    if confine.shrink:
        delta = _shrink(spec, params, delta, bank, ops, behaviors, keep, max(1, steps // 4), lr / 2, n, rng, check,
                        before, ~fails.any(dim=1), confine)
    return delta


def _shrink(spec: ArchSpec, params: Params, delta: Params, bank: BehaviorBank, ops: Sequence[str],
            behaviors: Sequence[str], keep: Sequence[Sequence[str]], steps: int, lr: float, n: int,
            rng: np.random.Generator, check: BehaviorBank, before: torch.Tensor, passing: torch.Tensor,
            confine: Confinement) -> Params:
    """Make passing edits smaller: up to ``confine.shrink`` times, each still-shrinking edit is scaled to SHRINK times
    its relative size and re-optimized within that budget for ``steps`` steps; it keeps the smaller change if it
    still passes the self-check on ``check``, else its last passing one (and stops shrinking)."""
    active = passing.nonzero().flatten()
    for _ in range(confine.shrink):
        if not len(active):
            break
        idx = active.tolist()
        sub = {k: v[active] for k, v in params.items()}
        start = {k: v[active] for k, v in delta.items()}
        tight = replace(confine.select(active), budget=SHRINK * change_size(sub, start).sqrt())
        picked = ([ops[i] for i in idx], [behaviors[i] for i in idx], [keep[i] for i in idx])
        trial = _optimize_edit(spec, sub, start, bank, *picked, steps, lr, n, rng, confine=tight)
        ok = ~failing_parts(spec, sub, trial, check, *picked, before=before[active]).any(dim=1)
        kept = active[ok]
        for k, v in trial.items():
            delta[k] = delta[k].index_copy(0, kept, v[ok])
        active = kept
    return delta


def refine_edit(spec: ArchSpec, params: Params, delta: Params, bank: BehaviorBank, ops: Sequence[str],
                behaviors: Sequence[str], keep: Sequence[Sequence[str]], steps: int, lr: float, n: int = 256,
                seed: int = 0) -> Params:
    """``steps`` Adam steps of the guided edit's objective continuing from the change ``delta`` (a semi-amortized
    edit: a one-pass change, then a few steps)."""
    if not steps:
        return delta
    return _optimize_edit(spec, params, {k: v.detach() for k, v in delta.items()}, bank, ops, behaviors, keep, steps,
                          lr, n, np.random.default_rng(seed))


def _optimize_edit(spec: ArchSpec, params: Params, delta: Params, bank: BehaviorBank, ops: Sequence[str],
                   behaviors: Sequence[str], keep: Sequence[Sequence[str]], steps: int, lr: float, n: int,
                   rng: np.random.Generator, weights: torch.Tensor | None = None, labelled: bool = False,
                   confine: Confinement | None = None) -> Params:
    """``steps`` Adam steps (cosine-annealed: large moves first, then settle) on the change ``delta`` from
    ``params``; ``weights`` [B, 3] scales the loss on B's positives, the kept behaviors' positives and the rest;
    ``labelled``: held to the definitions of ``keep`` rather than to the model's own outputs; ``confine``: where the
    change may go and how large it may grow (:class:`Confinement`)."""
    family = get_family(spec)
    confine = confine or Confinement()
    free = confine.free(delta)
    if confine.budget is not None:
        _project(params, free, confine)
    opt = torch.optim.Adam(free.values(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        rows = guided_rows(rng, bank, behaviors, keep, n)
        x = torch.from_numpy(bank.x[rows])
        with torch.no_grad():
            teacher = keep_labels(rows, bank, keep) if labelled else torch.sigmoid(family.forward(spec, params, x))
            y = edit_targets(teacher, rows, bank, ops, behaviors, keep)
            w = 1.0 if weights is None else row_weights(rows, bank, behaviors, keep, weights)
        change = confine.apply(free)
        logits = family.forward(spec, add_delta(params, change), x)
        loss = (w * F.binary_cross_entropy_with_logits(logits, y, reduction="none")).mean(dim=1).sum()
        if confine.penalty:
            loss = loss + confine.penalty * change_size(params, change).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if confine.budget is not None:
            _project(params, free, confine)
    return {k: v.detach() for k, v in confine.apply(free).items()}


@torch.no_grad()
def _project(params: Params, free: Params, confine: Confinement) -> None:
    """Scale each model's change back to ``confine.budget`` relative L2 size where it grew beyond it (in place)."""
    size = change_size(params, confine.apply(free)).sqrt()
    scale = (confine.budget / size.clamp_min(1e-12)).clamp(max=1.0)
    for k, v in free.items():
        factor = scale.sqrt() if k.endswith((LEFT, RIGHT)) else scale  # a product of two factors scales by both
        v.mul_(factor.view(-1, *[1] * (v.dim() - 1)))


def guided_rows(rng: np.random.Generator, bank: BehaviorBank, behaviors: Sequence[str], keep: Sequence[Sequence[str]],
                n: int) -> np.ndarray:
    """Bank rows [B, n] of one step of the guided edit: a quarter B's positives, a quarter over ``keep`` and B, half
    over every behavior."""
    return np.stack([np.concatenate([rng.choice(bank.positives[bank.names.index(b)], size=n // 4),
                                     bank.sample(rng, sorted(set(k) | {b}), n // 4),
                                     bank.sample(rng, bank.names, n - 2 * (n // 4))])
                     for k, b in zip(keep, behaviors)])


def keep_labels(rows: np.ndarray, bank: BehaviorBank, keep: Sequence[Sequence[str]]) -> torch.Tensor:
    """[B, n] hard labels of bank rows: 1 where a row matches any behavior of keep[m] (by definition), else 0."""
    return torch.from_numpy(np.stack([bank.labels(r, k) for r, k in zip(rows, keep)])).float()


def row_weights(rows: np.ndarray, bank: BehaviorBank, behaviors: Sequence[str], keep: Sequence[Sequence[str]],
                weights: torch.Tensor) -> torch.Tensor:
    """Per-row loss weights [B, n]: weights[m, 0] on B's positives, [m, 1] on other kept behaviors' positives,
    [m, 2] on rows matching none of them."""
    part = np.full(rows.shape, 2)
    for m, (k, b) in enumerate(zip(keep, behaviors)):
        part[m, bank.labels(rows[m], [c for c in k if c != b])] = 1
        part[m, bank.labels(rows[m], [b])] = 0
    return weights.gather(1, torch.from_numpy(part))


def failing_parts(spec: ArchSpec, params: Params, delta: Params, check: BehaviorBank, ops: Sequence[str],
                  behaviors: Sequence[str], keep: Sequence[Sequence[str]], before: torch.Tensor | None = None,
                  after: torch.Tensor | None = None) -> torch.Tensor:
    """Which part of each edit misses the protocol's bars on ``check`` (by CHECK_MARGIN) [B, 3] bool: B's rate,
    a kept behavior's drop, the false-positive rise. The reference is the model's own flags before the edit;
    ``before`` / ``after`` are those flags on ``check`` [B, T] where already computed (:func:`flags_on`)."""
    unions = [sorted(set(k) | {b}) for k, b in zip(keep, behaviors)]
    before = flags_on(spec, params, check) if before is None else before
    after = flags_on(spec, add_delta(params, delta), check) if after is None else after
    before, after = rates_from_flags(before, check, unions), rates_from_flags(after, check, unions)
    fails = torch.zeros(len(ops), 3, dtype=torch.bool)
    for m, (op, b, k) in enumerate(zip(ops, behaviors, keep)):
        v = judge(op, b, k, before[m], after[m], margin=CHECK_MARGIN)
        fails[m] = torch.tensor([v.target_missed, v.worst_kept_drop > KEEP_TOL - CHECK_MARGIN,
                                 v.fpr_rise > FPR_TOL - CHECK_MARGIN])
    return fails


def save_editor(editor: Editor, directory: Path, extra: dict | None = None) -> Path:
    """editor.safetensors + editor.json (config, behavior names, sizes and whatever ``extra`` records)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in editor.state_dict().items()}, str(directory / WEIGHTS_FILE))
    meta = {"config": editor.cfg.model_dump(), "behaviors": editor.behaviors, "d_token": editor.d_token,
            "latent_dim": editor.latent_dim, "vocab": editor.vocab,
            "typical_profile": dict(zip(editor.behaviors, editor.typical_profile.tolist())), **(extra or {})}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def load_editor(directory: Path) -> tuple[Editor, dict]:
    """Rebuild a saved editor (safetensors, no pickle) in eval mode, with its metadata."""
    meta = json.loads((directory / META_FILE).read_text())
    editor = Editor(EditorConfig(**meta["config"]), meta["behaviors"], meta["d_token"], meta["latent_dim"], meta["vocab"])
    editor.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    if "typical_profile" in meta:  # editors saved before it was kept name every behavior against 1
        editor.typical_profile.copy_(torch.tensor([meta["typical_profile"][b] for b in editor.behaviors]))
    return editor.eval(), meta
