"""Localization by directions (interpreter/editing/subspace.py): the interchange intervention and the learned subspace."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from interpreter.editing.groups import ArchGroup
from interpreter.editing.localization import localization_table
from interpreter.editing.subspace import interchange, learn_subspace, localize_subspace, random_basis, subspace_point
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.families import get_family
from zoo.interventions import patch

NAMES = ["all_same", "palindrome", "starts_with", "contains_abc"]


def test_interchanging_a_unit_direction_is_patching_that_unit() -> None:
    """With the basis e_j, interchanging the subspace replaces neuron j by the source's value and nothing else."""
    gen = torch.Generator().manual_seed(0)
    act, source = torch.randn(2, 5, 7, 6, generator=gen), torch.randn(2, 5, 7, 6, generator=gen)
    basis = torch.zeros(2, 6, 1)
    basis[0, 2, 0] = basis[1, 4, 0] = 1.0
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 2] = mask[1, 4] = True
    torch.testing.assert_close(interchange(basis, source)(act), patch(mask, source)(act))


def test_a_random_basis_is_orthonormal_and_the_interchange_leaves_its_complement_alone() -> None:
    gen = torch.Generator().manual_seed(1)
    q = random_basis(3, 8, 2, generator=gen)
    torch.testing.assert_close(q.transpose(1, 2) @ q, torch.eye(2).expand(3, 2, 2), atol=1e-5, rtol=0)
    act, source = torch.randn(3, 4, 8, generator=gen), torch.randn(3, 4, 8, generator=gen)
    out = interchange(q, source)(act)
    inside = lambda a: a @ q  # noqa: E731 - the component in span(q)
    torch.testing.assert_close(inside(out), inside(source), atol=1e-5, rtol=0)
    torch.testing.assert_close(out - out @ q @ q.transpose(1, 2), act - act @ q @ q.transpose(1, 2), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def two_grus(single_thread) -> tuple[ArchSpec, dict[str, torch.Tensor], list[list[str]]]:
    """Two GRUs trained on all_same + starts_with."""
    from zoo.data import make_cohort_data
    from zoo.train import train_cohort

    spec = ArchSpec(family="gru", depth=1, width=16, embed_dim=8)
    behaviors = [["all_same", "starts_with"]] * 2
    data = make_cohort_data(behaviors, 7, 7, 1500, 100, [3, 4])
    params = get_family(spec).init(spec, [3, 4])
    train_cohort(spec, params, torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]),
                 torch.full((2,), 1e-2), 12, 64, [3, 4])
    return spec, params, behaviors


def test_a_learned_direction_of_a_gru_state_switches_its_behavior_off_far_more_than_a_random_one(two_grus) -> None:
    """Interchanging one learned direction of the state turns all_same off on fresh sequences (by at least half, 3x
    more than a random direction) and leaves starts_with within 5 points."""
    spec, params, behaviors = two_grus
    group = ArchGroup(spec, params, pd.DataFrame({"model_id": ["a", "b"], "behaviors": behaviors}))
    rank, fresh = BehaviorBank.build(NAMES, 7, 7, 200, seed=0), BehaviorBank.build(NAMES, 7, 7, 200, seed=5)
    q = learn_subspace(spec, params, rank, behaviors, ["all_same", "starts_with"], 1, steps=50)
    assert q.shape == (2, 16, 1) and subspace_point(spec) == "gru.0"
    rows = localize_subspace(group, ["all_same", "all_same"], rank, fresh, k=1, seed=0, steps=200)
    table = localization_table(rows)
    assert table["passes"].all() and (table["drop_top"] > 0.5).all(), table.to_dict("records")


def test_a_subspace_edit_removes_the_behavior_through_the_readers_of_its_direction_only(two_grus) -> None:
    """The edit confined to B's learned direction changes only the weights that read the state (the recurrent matrix
    and the readout, plus the readout bias), each only within that direction, and switches all_same off."""
    from interpreter.editing.editor import Confinement, guided_edit
    from interpreter.editing.protocol import measure
    from interpreter.editing.subspace import subspace_confinement

    spec, params, behaviors = two_grus
    bank, fresh = BehaviorBank.build(NAMES, 7, 7, 200, seed=0), BehaviorBank.build(NAMES, 7, 7, 200, seed=5)
    mask, span = subspace_confinement(spec, params, bank, ["all_same"] * 2, behaviors, k=1, seed=0, steps=200)
    assert set(span) == {"w_hh0", "w_out"} and span["w_out"].shape == (2, 16, 1)
    delta = guided_edit(spec, params, bank, ["remove"] * 2, ["all_same"] * 2, behaviors, steps=400, lr=1e-2,
                        confine=Confinement(mask, span=span))
    assert {k for k, v in delta.items() if v.abs().max() > 0} <= {"w_hh0", "w_out", "b_out"}
    for k, basis in span.items():
        outside = delta[k] - basis @ (basis.transpose(1, 2) @ delta[k])
        assert outside.abs().max() < 1e-5 * max(delta[k].abs().max(), 1e-12) + 1e-7
    edited = {k: params[k] + delta.get(k, 0) for k in params}
    before, after = measure(spec, params, fresh, behaviors), measure(spec, edited, fresh, behaviors)
    for b, a in zip(before, after):
        assert b.behavior["all_same"] > 0.9 and a.behavior["all_same"] < 0.1, (b, a)
        assert abs(a.behavior["starts_with"] - b.behavior["starts_with"]) < 0.05, (b, a)
