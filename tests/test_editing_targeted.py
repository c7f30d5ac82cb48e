"""Exact judging over the whole input space, the weight-change metrics and the targeted and rank-one edits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from interpreter.editing.neurons import change_metrics, changed_neurons, weight_mask
from interpreter.editing.protocol import measure
from interpreter.editing.rank_one import rank_one_edit
from interpreter.editing.space import InputSpace, input_space, judged_on, judging_bank, space_size
from interpreter.editing.targeted import free_neurons
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.behaviors import get_behavior
from zoo.families import get_family, neuron_points

NAMES = ["all_same", "palindrome", "starts_with", "contains_abc"]


def test_exact_rates_equal_a_brute_force_count_over_every_sequence() -> None:
    """Over V=3, L=5 (243 sequences), each rate is the count of flagged sequences among those that match b and no
    other behavior of U (the false-positive rate: among those matching nothing in U), counted one by one."""
    vocab, length = 3, 5
    spec = ArchSpec(family="mlp", vocab=vocab, length=length, depth=1, width=8, embed_dim=4)
    params = get_family(spec).init(spec, [1, 2])
    params["b_out"] += torch.tensor([[0.3], [-0.2]])  # flags some sequences, not all
    space = input_space(NAMES, vocab, length)
    assert isinstance(space, InputSpace) and len(space.x) == space_size(vocab, length) == 243
    unions = [["all_same", "starts_with"], ["palindrome", "contains_abc", "starts_with"]]
    rates = measure(spec, params, space, unions)
    for m, union in enumerate(unions):
        counts = {b: [0, 0] for b in union + ["none"]}
        for seq in itertools.product(range(vocab), repeat=length):
            x = np.array([seq])
            hit = [b for b in union if get_behavior(b).matches(x, vocab)[0]]
            flagged = bool(get_family(spec).forward(spec, {k: v[m: m + 1] for k, v in params.items()},
                                                    torch.tensor([seq])) > 0)
            key = hit[0] if len(hit) == 1 else "none" if not hit else None
            if key is not None:
                counts[key][0] += flagged
                counts[key][1] += 1
        for b in union:
            assert rates[m].behavior[b] == pytest.approx(counts[b][0] / counts[b][1]), (b, counts[b])
        assert rates[m].fpr == pytest.approx(counts["none"][0] / counts["none"][1])


def test_judging_falls_back_to_the_sampled_bank_beyond_the_limit() -> None:
    sampled = lambda: BehaviorBank.build(NAMES, 7, 7, 20, seed=0)  # noqa: E731
    assert judged_on(judging_bank(NAMES, 7, 7, 1_000_000, sampled)) == "input_space"
    assert judged_on(judging_bank(NAMES, 7, 7, 800_000, sampled)) == "bank"
    space = input_space(NAMES, 3, 5)
    rows = space.sample(np.random.default_rng(0), ["palindrome"], 40)
    labels = space.labels(rows, ["palindrome"])
    assert labels[:20].all() and not labels[20:].any()  # half B's positives, half sequences matching nothing


SPECS = [ArchSpec(family="mlp", depth=1, width=6), ArchSpec(family="mlp", depth=3, width=6),
         ArchSpec(family="gru", depth=2, width=6), ArchSpec(family="attention", depth=2, width=8),
         ArchSpec(family="conv1d", depth=2, width=6)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key())
def test_a_change_of_one_neurons_weights_counts_that_neuron_and_moves_only_it(spec: ArchSpec) -> None:
    """Every family: a random change of the weights weight_mask marks for neuron j counts j alone as changed, and
    (where a layer's neurons are computed side by side) moves no other neuron of j's layer on any input."""
    params = get_family(spec).init(spec, [3])
    points = neuron_points(spec)
    total = sum(p.n_neurons for p in points)
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 7, size=(32, 7)))
    before: dict = {}
    get_family(spec).forward(spec, params, x, cache=before)
    moved_itself = 0
    for j in range(total):
        neurons = torch.zeros(1, total, dtype=torch.bool)
        neurons[0, j] = True
        mask = weight_mask(spec, params, neurons, readout=False)
        delta = {k: torch.randn_like(v) * mask[k] for k, v in mask.items()}
        assert changed_neurons(spec, params, delta)[0].nonzero().flatten().tolist() == [j]
        if spec.family == "gru":  # a unit's recurrent weights reach every unit of its layer at the next step
            continue
        after: dict = {}
        get_family(spec).forward(spec, {k: v + delta.get(k, 0) for k, v in params.items()}, x, cache=after)
        start = 0
        for p in points:
            if start <= j < start + p.n_neurons:
                moved = (after[p.name] - before[p.name]).abs().flatten(0, -2).amax(0) > 1e-6
                # j itself may not move (a ReLU unit dead on every input); no other unit of its layer may
                assert set(moved.nonzero().flatten().tolist()) <= {j - start}, (p.name, moved)
                moved_itself += int(moved[j - start])
            start += p.n_neurons
    assert spec.family == "gru" or moved_itself >= total // 2  # the check above is not passed by nothing moving


def test_change_metrics_size_share_and_rank() -> None:
    spec = ArchSpec(family="mlp", depth=2, width=8)
    params = get_family(spec).init(spec, [0, 1])
    zero = {k: torch.zeros_like(v) for k, v in params.items() if k != "embed"}
    u, v = torch.randn(2, 56, 1), torch.randn(2, 1, 8)
    delta = dict(zero, w0=u * v)  # rank one, every layer-0 neuron
    delta["w0"][1] = 0.0
    got = change_metrics(spec, params, delta)
    assert got["max_rank"].tolist() == [1, 0]
    assert got["neurons_changed"].tolist() == [0.5, 0.0]
    assert got["change"][0] > 0 and got["change"][1] == 0


def test_targeted_choice_keeps_to_its_budget(single_thread) -> None:
    """Every hidden layer gets ceil(share x width) free neurons, for removals and adds alike."""
    spec = ArchSpec(family="mlp", depth=2, width=8)
    params = get_family(spec).init(spec, [0, 1])
    bank = BehaviorBank.build(NAMES, 7, 7, 200, seed=0)
    free = free_neurons(spec, params, bank, ["remove", "add"], ["all_same", "palindrome"], [["all_same"], []], 0.25)
    assert free.sum(1).tolist() == [4, 4] and free[:, :8].sum(1).tolist() == [2, 2]


def test_rank_one_edit_changes_one_matrix_by_rank_one(single_thread) -> None:
    spec = ArchSpec(family="mlp", depth=2, width=8)
    params = get_family(spec).init(spec, [0, 1])
    bank = BehaviorBank.build(NAMES, 7, 7, 200, seed=0)
    delta = rank_one_edit(spec, params, bank, ["add", "add"], ["starts_with", "all_same"], [[], []], steps=5)
    metrics = change_metrics(spec, params, delta)
    assert metrics["max_rank"].tolist() == [1, 1]
    assert [k for k, d in delta.items() if d.abs().sum() > 0] == ["w1"]  # the last hidden layer, for an add


@pytest.fixture(scope="module")
def all_same_pair() -> tuple[ArchSpec, dict]:
    """Two MLPs (depth 2, width 24) trained on all_same: one gets starts_with added, the other all_same removed."""
    from zoo.data import make_cohort_data
    from zoo.train import train_cohort

    spec = ArchSpec(family="mlp", depth=2, width=24, embed_dim=8)
    data = make_cohort_data([["all_same"]] * 2, 7, 7, 600, 100, [11, 12])
    params = get_family(spec).init(spec, [11, 12])
    train_cohort(spec, params, torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]),
                 torch.full((2,), 1e-2), 15, 64, [11, 12])
    return spec, params


EDITS = (["add", "remove"], ["starts_with", "all_same"], [["all_same"], ["all_same"]])


def _edit_and_judge(spec: ArchSpec, params: dict, confine, check: BehaviorBank | None = None) -> dict:
    """The two edits of :data:`EDITS` with ``confine`` (300 steps, 3 rounds), both asserted to pass over all 823,543
    sequences; returns the change metrics."""
    from interpreter.editing.editor import guided_edit
    from interpreter.editing.protocol import judge

    bank = BehaviorBank.build(NAMES, 7, 7, 200, seed=0)
    check = check or BehaviorBank.build(NAMES, 7, 7, 200, seed=2)
    delta = guided_edit(spec, params, bank, *EDITS, steps=300, lr=1e-2, check=check, rounds=3, confine=confine)
    space, unions = input_space(NAMES, 7, 7), [["all_same", "starts_with"], ["all_same"]]
    before = measure(spec, params, space, unions)
    after = measure(spec, {k: v + delta[k] if k in delta else v for k, v in params.items()}, space, unions)
    assert before[0].behavior["starts_with"] < 0.5 and before[1].behavior["all_same"] > 0.9
    assert judge("add", "starts_with", ["all_same"], before[0], after[0]).success, after[0]
    assert judge("remove", "all_same", ["all_same"], before[1], after[1]).success, after[1]
    return {**change_metrics(spec, params, delta), "delta": delta}


def test_targeted_guided_edit_adds_and_removes_while_changing_a_fifth_of_the_neurons(single_thread, all_same_pair) -> None:
    """The targeted guided edit passes both edits, judged over all 823,543 sequences, changing at most
    ceil(0.2 x 24) = 5 neurons per layer."""
    from interpreter.editing.editor import Confinement
    from interpreter.editing.targeted import targeted_mask

    spec, params = all_same_pair
    bank = BehaviorBank.build(NAMES, 7, 7, 200, seed=0)
    mask = targeted_mask(spec, params, bank, *EDITS, 0.2)
    metrics = _edit_and_judge(spec, params, Confinement(mask, penalty=1.0))
    assert (metrics["neurons_changed"] <= 10 / 48).all(), metrics
    assert changed_neurons(spec, params, metrics["delta"]).view(2, 2, 24).sum(2).max() <= 5


def test_a_low_rank_change_factors_and_recomposes_exactly() -> None:
    """Confinement(rank=2): a change of rank <= 2 becomes two factors per matrix and back; vectors stay whole."""
    from interpreter.editing.editor import Confinement

    gen = torch.Generator().manual_seed(0)
    delta = {"w0": torch.randn(3, 10, 2, generator=gen) @ torch.randn(3, 2, 6, generator=gen),
             "b0": torch.randn(3, 6, generator=gen)}
    confine = Confinement(rank=2)
    free = confine.free(delta)
    assert sorted(free) == ["b0", "w0@left", "w0@right"] and free["w0@left"].shape == (3, 10, 2)
    back = confine.apply(free)
    torch.testing.assert_close(back["w0"], delta["w0"], atol=1e-5, rtol=0)
    torch.testing.assert_close(back["b0"], delta["b0"])
    zero = confine.apply(confine.free({"w0": torch.zeros(3, 10, 6)}))["w0"]
    assert zero.abs().max() == 0  # starts at no change, with a left factor that is not zero (so not stuck)
    assert confine.free({"w0": torch.zeros(3, 10, 6)})["w0@left"].abs().max() > 0


def test_low_rank_guided_edit_passes_with_rank_two_per_layer_and_shrinking_only_makes_it_smaller(
        single_thread, all_same_pair) -> None:
    """Confinement(rank=2): both edits pass with every matrix changed by rank <= 2; with two shrink rounds, checked
    over the whole input space, each change is no larger and still passes."""
    from interpreter.editing.editor import Confinement

    spec, params = all_same_pair
    space = input_space(NAMES, 7, 7)
    plain = _edit_and_judge(spec, params, Confinement(penalty=1.0, rank=2), check=space)
    assert (plain["max_rank"] <= 2).all(), plain["max_rank"]
    shrunk = _edit_and_judge(spec, params, Confinement(penalty=1.0, rank=2, shrink=2), check=space)
    assert (shrunk["max_rank"] <= 2).all()
    assert (shrunk["change"] <= plain["change"] + 1e-6).all(), (shrunk["change"], plain["change"])
