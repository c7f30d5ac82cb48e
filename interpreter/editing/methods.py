"""The edit methods, one registry entry each: ``METHODS[name](request, tools)`` returns a weight change.

- ``decoder``: the latent edit decoded to a weight change in one forward pass (no data at edit time; MLPs only);
- ``guided``: the edit decoded by optimization: fine-tuning with B's definition as the labeller on B's positives
  and the model's own outputs as targets elsewhere, the kept behaviors being those the interpreter reads and,
  for repair, B the one that looks corrupted (no labels of the model);
- ``steering``: mean-latent steering vector through a reconstruction decoder (the public method; MLPs only);
- ``task_arithmetic``: mean sibling-pair weight difference for B (where the architecture has sibling pairs);
- ``finetune_matched``: the guided edit's machinery with hard labels from the definitions of every behavior the
  model is assigned (uses the model's labels: a bound on equal footing);
- ``finetune_short``: a few epochs on 1,000 relabeled bank sequences (uses the model's labels);
- ``guided_targeted``: the guided edit confined to a share of each layer's neurons (B's carriers first, never the
  kept behaviors' carriers) and the readout bias, with a penalty on the size of the change, then shrunk while it
  still passes its self-check (:mod:`interpreter.editing.targeted`);
- ``guided_lowrank``: the guided edit with the change of every weight matrix of rank ``edit.lowrank_rank`` (two
  factors, LoRA-style), the same penalty and shrinking;
- ``guided_subspace``: removal and repair only: the guided edit acting through the subspace that localization
  learns for B (:func:`interpreter.editing.subspace.subspace_confinement`: the weights that read the last hidden
  layer, projected onto its ``edit.localization_k``-dimensional span, and the readout bias), penalty and shrinking
  as above;
- ``rank_one``: a ROME-style rank-one change of one MLP layer (:mod:`interpreter.editing.rank_one`; MLPs only);
- ``onepass``: the amortized editor (:mod:`interpreter.editing.onepass`): one gradient of the edit loss at the
  current weights, one pass of a neuron-aligned network that turns it into a change (every family);
- ``onepass_refine``: that change followed by ``edit.onepass.refine_steps`` Adam steps of the guided objective
  (semi-amortized);
- ``onepass_shuffled`` (a control): the one-pass editor fed another model's reading (the edit set's readings rolled
  by one), with the model's own weights, gradient and kept behaviors;
- ``retrieval`` (a control): the model replaced by the training model of its architecture nearest in latent space
  among the clean ones assigned exactly the target behavior set (else, among those with B for an add or without
  it for a removal); its every weight, the embedding included.

A method's ``applies_to(spec, tools)`` says whether it serves an architecture at all; it may still return None
for a request it has nothing to offer (task arithmetic without a vector for some behavior).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from interpreter.editing.baselines import short_finetune, steer
from interpreter.editing.config import EditConfig
from interpreter.editing.decoder import NeuronAlignedDecoder, decodable, refusal
from interpreter.editing.context import EditError
from interpreter.editing.editor import Confinement, Editor, Encoded, Pool, code_op, guided_edit, refine_edit
from interpreter.editing.onepass import OnePassEditor, onepass_edit
from interpreter.editing.plan import EditSet
from interpreter.editing.rank_one import rank_one_edit
from interpreter.editing.subspace import subspace_confinement
from interpreter.editing.targeted import targeted_mask
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.families.base import Params


@dataclass
class Tools:
    """What the methods draw on besides the request: trained parts, banks and settings of one run."""

    cfg: EditConfig
    names: list[str]
    editor: Editor
    train_bank: BehaviorBank  # the rows every edit trains on
    check_bank: BehaviorBank  # the guided edit's label-free self-check
    reconstruction: NeuronAlignedDecoder | None = None  # steering baseline (evaluation only)
    steering: torch.Tensor | None = None  # [K, latent_dim] steering vectors
    task_vectors: dict[str, dict[str, Params]] = field(default_factory=dict)  # per architecture and behavior
    onepass: OnePassEditor | None = None  # the amortized one-pass editor (None: the run trained none)
    library: dict[str, Pool] = field(default_factory=dict)  # training models per architecture (retrieval control)


@dataclass
class EditRequest:
    """Edits of some models of one architecture, as every method receives them."""

    edits: EditSet  # op, the models, and each edit's true behavior (label-using methods only)
    enc: Encoded  # the interpreter's reading of the models
    read: list[list[str]]  # the behaviors the interpreter reads in each model (what label-free methods keep)
    chosen: list[str]  # the behavior each edit is about as label-free methods know it (repair: the named one)

    @property
    def spec(self) -> ArchSpec:
        return self.edits.group.spec

    @property
    def params(self) -> Params:
        return self.edits.group.params

    def ops(self) -> list[str]:
        """The operation of each edit as carried out (repair is "add")."""
        return [code_op(self.edits.op)] * len(self.chosen)

    def sign(self) -> float:
        return -1.0 if self.edits.op == "remove" else 1.0


Edit = Callable[[EditRequest, Tools], Params | None]


@dataclass(frozen=True)
class EditMethod:
    """One way to make edits: ``edit`` returns the weight change of every model (None: nothing to offer)."""

    edit: Edit
    applies_to: Callable[[ArchSpec, Tools], bool] = lambda spec, tools: True
    why_not: Callable[[ArchSpec], str] = lambda spec: f"this method cannot edit {spec.key()}"
    uses_labels: bool = False  # reads the model's assigned behaviors: a bound, not a competitor
    one_pass: bool = False  # a forward pass with no gradient

    def __call__(self, request: EditRequest, tools: Tools) -> Params | None:
        with torch.no_grad() if self.one_pass else torch.enable_grad():
            delta = self.edit(request, tools)
        return None if delta is None else {k: v.detach() for k, v in delta.items()}


def _decoder(r: EditRequest, t: Tools) -> Params:
    return t.editor.delta(r.spec, r.params, r.enc, *t.editor.codes(r.ops(), r.chosen))


def guided_confined(r: EditRequest, t: Tools, confine: Confinement | None = None) -> Params:
    """The guided edit with ``t.cfg``'s steps, step size and rounds, kept small by ``confine`` (the targeted methods,
    and any variant of them)."""
    c = t.cfg
    return guided_edit(r.spec, r.params, t.train_bank, r.ops(), r.chosen, r.read, c.guided_steps, c.guided_lr,
                       seed=c.seed, check=t.check_bank, rounds=c.guided_rounds, confine=confine)


def _steering(r: EditRequest, t: Tools) -> Params:
    shift = r.sign() * t.steering[[t.names.index(b) for b in r.chosen]]
    return steer(t.reconstruction, r.spec, r.params, r.enc, shift)[1]


def _task_arithmetic(r: EditRequest, t: Tools) -> Params | None:
    vectors = t.task_vectors.get(r.spec.key(), {})
    if not all(b in vectors for b in r.chosen):
        return None
    return {k: torch.stack([r.sign() * vectors[b][k] for b in r.chosen]) for k in r.params if k != "embed"}


def _guided_targeted(r: EditRequest, t: Tools) -> Params:
    c = t.cfg
    mask = targeted_mask(r.spec, r.params, t.train_bank, r.ops(), r.chosen, r.read, c.targeted_share, c.seed)
    return guided_confined(r, t, Confinement(mask, c.targeted_penalty, shrink=c.targeted_shrink))


def _guided_lowrank(r: EditRequest, t: Tools) -> Params:
    c = t.cfg
    return guided_confined(r, t, Confinement(penalty=c.targeted_penalty, shrink=c.targeted_shrink, rank=c.lowrank_rank))


def _guided_subspace(r: EditRequest, t: Tools) -> Params | None:
    if r.edits.op == "add":  # a subspace is learned for a behavior the model has
        return None
    c = t.cfg
    mask, span = subspace_confinement(r.spec, r.params, t.train_bank, r.chosen, r.read, c.localization_k, c.seed)
    return guided_confined(r, t, Confinement(mask, c.targeted_penalty, shrink=c.targeted_shrink, span=span))


def _rank_one(r: EditRequest, t: Tools) -> Params:
    return rank_one_edit(r.spec, r.params, t.train_bank, r.ops(), r.chosen, r.read, t.cfg.rank_one_steps, seed=t.cfg.seed)


def _finetune_matched(r: EditRequest, t: Tools) -> Params:
    c = t.cfg
    return guided_edit(r.spec, r.params, t.train_bank, r.ops(), r.edits.behaviors, r.edits.assigned(), c.guided_steps,
                       c.guided_lr, seed=c.seed, check=t.check_bank, rounds=c.guided_rounds, labelled=True)


def _finetune_short(r: EditRequest, t: Tools) -> Params:
    lr = torch.tensor(r.edits.group.rows["lr"].to_numpy(), dtype=torch.float32)
    new = short_finetune(r.spec, r.params, t.train_bank, r.edits.true_targets(), r.edits.unions(), lr, t.cfg.seed,
                         epochs=t.cfg.finetune_epochs)
    return {k: new[k] - r.params[k] for k in r.params if k != "embed"}


def _onepass(r: EditRequest, t: Tools, enc: Encoded | None = None) -> Params:
    if t.onepass is None:
        raise EditError("this run's editor has no one-pass editor (rerun 'zoolens edit train')")
    return onepass_edit(t.onepass, r.spec, r.params, r.enc if enc is None else enc, t.train_bank, r.ops(), r.chosen,
                        r.read, seed=t.cfg.seed)


def _onepass_shuffled(r: EditRequest, t: Tools) -> Params:
    return _onepass(r, t, r.enc.select(torch.roll(torch.arange(len(r.chosen)), 1)))


def _retrieval(r: EditRequest, t: Tools) -> Params:
    pool = t.library[r.spec.key()]
    sets = [frozenset(b) for b in pool.behaviors]
    clean = [c is None for c in pool.corrupted]
    delta = {k: torch.zeros_like(v) for k, v in r.params.items()}
    for m, (op, b, read) in enumerate(zip(r.ops(), r.chosen, r.read)):
        want = frozenset(read) - {b} if op == "remove" else frozenset(read) | {b}
        pick = [i for i, s in enumerate(sets) if clean[i] and s == want]
        pick = pick or [i for i, s in enumerate(sets) if clean[i] and (b in s) == (op != "remove")]
        j = pick[int((pool.enc.latent[pick] - r.enc.latent[m]).norm(dim=1).argmin())]
        for k in delta:
            delta[k][m] = pool.params[k][j] - r.params[k][m]
    return delta


def _onepass_refine(r: EditRequest, t: Tools) -> Params:
    c = t.cfg.onepass
    return refine_edit(r.spec, r.params, _onepass(r, t), t.train_bank, r.ops(), r.chosen, r.read, c.refine_steps,
                       c.refine_lr, seed=t.cfg.seed)


def _mlp_only(spec: ArchSpec, tools: Tools) -> bool:
    return decodable(spec)


def _mlp(spec: ArchSpec, tools: Tools) -> bool:
    return spec.family == "mlp"


def _mlp_refusal(spec: ArchSpec) -> str:
    return f"rank_one edits MLP layers only, not {spec.key()}; the guided edits serve every family"


def _has_library(spec: ArchSpec, tools: Tools) -> bool:
    return spec.key() in tools.library


def _has_siblings(spec: ArchSpec, tools: Tools) -> bool:
    return spec.key() in tools.task_vectors


METHODS: dict[str, EditMethod] = {
    "decoder": EditMethod(_decoder, _mlp_only, refusal, one_pass=True),
    "guided": EditMethod(guided_confined),
    "steering": EditMethod(_steering, _mlp_only, refusal, one_pass=True),
    "task_arithmetic": EditMethod(_task_arithmetic, _has_siblings),
    "finetune_matched": EditMethod(_finetune_matched, uses_labels=True),
    "finetune_short": EditMethod(_finetune_short, uses_labels=True),
    "guided_targeted": EditMethod(_guided_targeted),
    "guided_lowrank": EditMethod(_guided_lowrank),
    "guided_subspace": EditMethod(_guided_subspace),
    "rank_one": EditMethod(_rank_one, _mlp, _mlp_refusal),
    "onepass": EditMethod(_onepass),
    "onepass_refine": EditMethod(_onepass_refine),
    "onepass_shuffled": EditMethod(_onepass_shuffled),
    "retrieval": EditMethod(_retrieval, _has_library),
}
