"""The edit protocol's pass/fail logic on hand-made cases, and the behavior bank it measures on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interpreter.editing.protocol import Rates, eval_rows, judge, measure, success_table
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.behaviors import match_matrix
from zoo.families import get_family

NAMES = ["all_same", "palindrome", "starts_with", "contains_abc"]


@pytest.fixture(scope="module")
def bank() -> BehaviorBank:
    return BehaviorBank.build(NAMES, vocab=7, length=7, n_per_behavior=60, seed=3)


def rates(fpr: float = 0.05, **behavior: float) -> Rates:
    return Rates(dict(behavior), fpr)


@pytest.mark.parametrize("after, ok", [
    (rates(palindrome=0.95, all_same=0.97, fpr=0.08), True),
    (rates(palindrome=0.89, all_same=0.97, fpr=0.05), False),  # B not flagged often enough
    (rates(palindrome=0.95, all_same=0.90, fpr=0.05), False),  # a kept behavior fell 8 points
    (rates(palindrome=0.95, all_same=0.97, fpr=0.11), False),  # false positives rose 6 points
])
def test_add(after: Rates, ok: bool) -> None:
    before = rates(palindrome=0.10, all_same=0.98, fpr=0.05)
    v = judge("add", "palindrome", ["all_same"], before, after)
    assert v.success is ok
    assert bool(v.reasons) is not ok


@pytest.mark.parametrize("after, ok", [
    (rates(palindrome=0.10, all_same=0.95, fpr=0.0), True),  # a 3-point drop of a kept behavior is allowed
    (rates(palindrome=0.12, all_same=0.98, fpr=0.0), False),
    (rates(palindrome=0.02, all_same=0.92, fpr=0.0), False),
])
def test_remove(after: Rates, ok: bool) -> None:
    before = rates(palindrome=0.97, all_same=0.98, fpr=0.02)
    assert judge("remove", "palindrome", ["palindrome", "all_same"], before, after).success is ok


def test_repair_is_measured_against_the_clean_model() -> None:
    before = rates(palindrome=0.40, fpr=0.03)
    assert judge("repair", "palindrome", ["palindrome"], before, rates(palindrome=0.93, fpr=0.03), clean_rate=0.95).success
    assert not judge("repair", "palindrome", ["palindrome"], before, rates(palindrome=0.92, fpr=0.03), clean_rate=0.95).success
    with pytest.raises(ValueError):
        judge("repair", "palindrome", ["palindrome"], before, before)


def test_success_table_counts_per_operation_and_behavior() -> None:
    rows = [{"op": "add", "behavior": "b", "success": True, "change": 0.2},
            {"op": "add", "behavior": "b", "success": False, "change": 0.4},
            {"op": "remove", "behavior": "c", "success": True, "change": 0.1}]
    table = success_table(rows)
    assert table["add"]["b"] == {"n": 2, "success": 1, "change": pytest.approx(0.3), "rate": 0.5}
    assert table["remove"]["c"]["rate"] == 1.0


def test_bank_matches_and_labels(bank: BehaviorBank) -> None:
    assert np.array_equal(bank.matches, match_matrix(bank.x, NAMES, 7))
    for j, rows in enumerate(bank.positives):
        assert bank.matches[rows, j].all()
    assert not bank.matches[bank.random].any()
    rows = bank.sample(np.random.default_rng(0), ["palindrome", "starts_with"], 40)
    assert len(rows) == 40
    y = bank.labels(rows, ["palindrome"])
    assert np.array_equal(y, bank.matches[rows, 1])
    assert not bank.labels(rows, []).any()


def test_eval_rows_keep_each_behaviors_own_positives(bank: BehaviorBank) -> None:
    own, negatives = eval_rows(bank, ["palindrome", "all_same"])
    assert not bank.matches[own["palindrome"], 0].any()  # all-same sequences are palindromes too: excluded
    assert bank.matches[own["palindrome"], 1].all()
    assert not bank.matches[negatives][:, :2].any()


def test_measure_on_a_model_that_flags_by_first_token(bank: BehaviorBank) -> None:
    """A hand-built MLP that flags exactly the sequences starting with token 0 (what starts_with means here)."""
    spec = ArchSpec(family="mlp", vocab=7, length=7, embed_dim=7, depth=1, width=1)
    params = {k: torch.zeros_like(v) for k, v in get_family(spec).init(spec, [0]).items()}
    params["embed"][0] = torch.eye(7)
    params["w0"][0, 0, 0] = 1.0  # position 0, token 0
    params["w_out"][0, 0, 0], params["b_out"][0, 0] = 10.0, -5.0
    starts = bank.matches[:, NAMES.index("starts_with")]
    assert np.array_equal(bank.x[:, 0] == 0, starts)  # the premise of the hand-built model
    (r,) = measure(spec, params, bank, [["starts_with", "palindrome"]])
    assert r.behavior["starts_with"] == 1.0
    assert r.behavior["palindrome"] == 0.0
    assert r.fpr == 0.0
