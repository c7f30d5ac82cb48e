"""The guided edit and the localization check on any ``nn.Module`` (an adapter model), through
``torch.func.functional_call`` over its parameters: the editing package's own functions run unchanged on the
module presented as a family (:func:`zoo.adapters.family.as_family`), and the edit is judged by the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from interpreter.editing.decoder import add_delta
from interpreter.editing.editor import guided_edit
from interpreter.editing.protocol import judge, measure
from zoo.adapters.family import as_family, release
from zoo.adapters.subject import ModuleSubject
from zoo.behavior_bank import BehaviorBank


def edit_module(subject: ModuleSubject, op: str, behavior: str, keep: Sequence[str], names: Sequence[str],
                steps: int = 300, lr: float = 1e-2, rounds: int = 2, bank_size: int = 256, seed: int = 0,
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Add or remove ``behavior`` in the module while keeping ``keep`` (the behaviors it is read to have): the
    guided edit, then the protocol's verdict on a fresh bank. Returns the edited parameters (the module's own names)
    and the verdict with the rates before and after."""
    if op not in ("add", "remove"):
        raise ValueError(f"op must be add or remove, got {op!r}")
    vocab, length = subject.vocab or 7, subject.length or 7
    spec, params = as_family(subject)
    try:
        train = BehaviorBank.build(names, vocab, length, bank_size, seed)
        check = BehaviorBank.build(names, vocab, length, bank_size, seed + 1)
        judge_bank = BehaviorBank.build(names, vocab, length, 2 * bank_size, seed + 2)
        kept = sorted(set(keep) - {behavior})
        union = sorted(set(kept) | {behavior})
        delta = guided_edit(spec, params, train, [op], [behavior], [kept], steps, lr=lr, seed=seed, check=check,
                            rounds=rounds)
        edited = add_delta(params, delta)
        before = measure(spec, params, judge_bank, [union])[0]
        after = measure(spec, edited, judge_bank, [union])[0]
        verdict = judge(op, behavior, kept, before, after)
    finally:
        release(spec)
    return ({k: v[0].detach() for k, v in edited.items()},
            {"op": op, "behavior": behavior, "kept": kept, **asdict(verdict),
             "before": {"behavior": before.behavior, "fpr": before.fpr},
             "after": {"behavior": after.behavior, "fpr": after.fpr}})
