"""Behavior editing: the decoder's symmetry, a guided edit of a small model, carriers, repair naming, and the edit stages through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from interpreter.editing.decoder import IncompatibleArchitecture, NeuronAlignedDecoder, check_decodable
from interpreter.editing.editor import (CHECK_PARTS, Editor, EditorConfig, Encoded, failing_parts, guided_edit, load_editor,
                                        row_weights, save_editor, typical_profile)
from interpreter.editing.localization import greedy_carriers
from interpreter.editing.methods import METHODS
from interpreter.editing.protocol import judge, measure
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.data import make_cohort_data
from zoo.families import get_family, split_neurons
from zoo.interventions import resample
from zoo.store import ZooStore
from zoo.train import train_cohort

REPO = Path(__file__).resolve().parent.parent
NAMES = ["all_same", "palindrome", "starts_with", "contains_abc"]


def test_decoder_is_permutation_equivariant() -> None:
    """Reordering a layer's neurons (and their tokens) reorders the decoded change the same way."""
    torch.manual_seed(0)
    spec = ArchSpec(family="mlp", depth=2, width=6, embed_dim=8)
    params = get_family(spec).init(spec, [1])
    n = spec.depth * spec.width + 1
    tokens, cond = torch.randn(1, n, 12), torch.randn(1, 5)
    dec = NeuronAlignedDecoder(12, 5, spec.vocab, d_hidden=16, rank=3, zero_init=False).eval()
    perm = torch.randperm(spec.width)
    permuted = dict(params, w0=params["w0"][:, :, perm], b0=params["b0"][:, perm], w1=params["w1"][:, perm, :])
    order = torch.cat([perm, torch.arange(spec.width, n)])
    with torch.no_grad():
        a = dec(spec, params, tokens, cond)
        b = dec(spec, permuted, tokens[:, order], cond)
    torch.testing.assert_close(b["w0"], a["w0"][:, :, perm])
    torch.testing.assert_close(b["b0"], a["b0"][:, perm])
    torch.testing.assert_close(b["w1"], a["w1"][:, perm, :])
    torch.testing.assert_close(b["w_out"], a["w_out"])


def test_one_pass_decoder_writes_mlp_weights_only() -> None:
    check_decodable(ArchSpec(family="mlp"))
    with pytest.raises(IncompatibleArchitecture, match="gru-d2-w32.*guided edit serves every family"):
        check_decodable(ArchSpec(family="gru"))


@pytest.mark.parametrize("spec", [ArchSpec(family="mlp", depth=2, width=24, embed_dim=8),
                                  ArchSpec(family="gru", depth=1, width=16, embed_dim=8),
                                  ArchSpec(family="attention", depth=1, width=16, embed_dim=8)], ids=lambda s: s.family)
def test_guided_edit_adds_and_removes_a_behavior_in_a_small_model(spec: ArchSpec, single_thread) -> None:
    """Two models of a family trained on all_same; a guided edit adds starts_with to one and removes all_same from
    the other (the same code for every family: it only needs the batched forward)."""
    data = make_cohort_data([["all_same"]] * 2, 7, 7, 600, 100, [11, 12])
    params = get_family(spec).init(spec, [11, 12])
    train_cohort(spec, params, torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]),
                 torch.full((2,), 1e-2), 15, 64, [11, 12])
    train_bank = BehaviorBank.build(NAMES, 7, 7, 200, seed=0)
    fresh = BehaviorBank.build(NAMES, 7, 7, 200, seed=1)
    check = BehaviorBank.build(NAMES, 7, 7, 200, seed=2)
    ops, targets, keep = ["add", "remove"], ["starts_with", "all_same"], [["all_same"], ["all_same"]]
    delta = guided_edit(spec, params, train_bank, ops, targets, keep, steps=300, lr=1e-2, check=check, rounds=3)
    edited = {k: v + delta[k] if k in delta else v for k, v in params.items()}
    unions = [["all_same", "starts_with"], ["all_same"]]
    before, after = measure(spec, params, fresh, unions), measure(spec, edited, fresh, unions)
    assert before[0].behavior["starts_with"] < 0.5 and before[1].behavior["all_same"] > 0.9  # a real change to make
    assert judge("add", "starts_with", ["all_same"], before[0], after[0]).success, after[0]
    assert judge("remove", "all_same", ["all_same"], before[1], after[1]).success, after[1]


def test_finetune_matched_holds_the_model_to_its_labels_where_guided_holds_it_to_its_outputs(single_thread) -> None:
    """A model that flags everything, assigned all_same: adding palindrome by the guided edit keeps its false
    positives (its own outputs are the targets away from B), the matched fine-tuning drops them (hard labels)."""
    spec = ArchSpec(family="mlp", depth=1, width=8, embed_dim=8)
    params = _constant_models(spec, [5.0])
    bank, fresh = BehaviorBank.build(NAMES, 7, 7, 100, seed=0), BehaviorBank.build(NAMES, 7, 7, 100, seed=1)
    args = (spec, params, bank, ["add"], ["palindrome"], [["all_same"]])
    fpr = {}
    for labelled in (False, True):
        delta = guided_edit(*args, steps=150, lr=1e-2, labelled=labelled)
        edited = {k: v + delta[k] if k in delta else v for k, v in params.items()}
        fpr[labelled] = measure(spec, edited, fresh, [["all_same", "palindrome"]])[0].fpr
    assert fpr[False] > 0.9 and fpr[True] < fpr[False] - 0.3, fpr


def test_every_method_says_which_families_it_serves() -> None:
    """The registry replaces the special cases: the decoders serve MLPs, task arithmetic architectures with sibling
    vectors, the rest (the one-pass editor too) every family; the two fine-tuning baselines are marked as using the model's labels."""
    from interpreter.editing.config import EditConfig
    from interpreter.editing.methods import Tools

    mlp, gru = ArchSpec(family="mlp"), ArchSpec(family="gru")
    tools = Tools(EditConfig(), NAMES, None, None, None, task_vectors={mlp.key(): {}})
    serves = {name: (m.applies_to(mlp, tools), m.applies_to(gru, tools)) for name, m in METHODS.items()}
    assert serves == {"decoder": (True, False), "guided": (True, True), "steering": (True, False),
                      "task_arithmetic": (True, False), "finetune_matched": (True, True), "finetune_short": (True, True),
                      "guided_targeted": (True, True), "guided_lowrank": (True, True), "guided_subspace": (True, True),
                      "rank_one": (True, False), "onepass": (True, True),
                      "onepass_refine": (True, True), "onepass_shuffled": (True, True), "retrieval": (False, False)}
    assert {n for n, m in METHODS.items() if m.uses_labels} == {"finetune_matched", "finetune_short"}
    assert "one-pass decoder writes mlp weights only" in METHODS["decoder"].why_not(gru)


def _constant_models(spec: ArchSpec, logits: list[float]) -> dict[str, torch.Tensor]:
    """Models whose output logit is a constant (zero readout weights): they flag everything or nothing."""
    params = get_family(spec).init(spec, list(range(len(logits))))
    params["w_out"].zero_()
    params["b_out"].copy_(torch.tensor(logits).view(-1, 1))
    return params


def test_self_check_names_the_part_of_an_edit_that_misses_its_bar() -> None:
    """An unchanged model misses the add's or removal's own bar; flagging everything adds B but raises false
    positives; flagging nothing removes B but drops the kept behavior. Row weights follow the same parts."""
    spec = ArchSpec(family="mlp", depth=1, width=4, embed_dim=8)
    params = _constant_models(spec, [-5.0, 5.0])  # flags nothing / flags everything
    check = BehaviorBank.build(NAMES, 7, 7, 100, seed=3)
    ops, targets, keep = ["add", "remove"], ["starts_with", "all_same"], [[], ["all_same", "palindrome"]]
    zero = {k: torch.zeros_like(v) for k, v in params.items() if k != "embed"}
    flip = dict(zero, b_out=torch.tensor([[10.0], [-10.0]]))
    assert failing_parts(spec, params, zero, check, ops, targets, keep).tolist() == [[True, False, False], [True, False, False]]
    assert failing_parts(spec, params, flip, check, ops, targets, keep).tolist() == [[False, False, True], [False, True, False]]

    rows = np.stack([check.sample(np.random.default_rng(0), ["all_same", "palindrome"], 64)] * 2)
    w = row_weights(rows, check, ["all_same", "all_same"], [["all_same", "palindrome"], []], torch.tensor([[1.0, 2, 3]] * 2))
    is_b, is_kept = check.labels(rows[0], ["all_same"]), check.labels(rows[0], ["palindrome"])
    assert w[0].tolist() == np.where(is_b, 1.0, np.where(is_kept, 2.0, 3.0)).tolist()
    assert w[1].tolist() == np.where(is_b, 1.0, 3.0).tolist()  # nothing kept: everything but B is "the rest"


def test_guided_edit_refines_only_the_edits_that_fail_their_check(single_thread) -> None:
    """With a check bank, edits that pass after the first run are returned as they were; the others change."""
    spec = ArchSpec(family="mlp", depth=1, width=8, embed_dim=8)
    params = get_family(spec).init(spec, [0, 1, 2])
    params["b_out"].copy_(torch.tensor([[-3.0], [-3.0], [3.0]]))  # flag (almost) nothing, nothing, everything
    bank, check = BehaviorBank.build(NAMES, 7, 7, 100, seed=0), BehaviorBank.build(NAMES, 7, 7, 100, seed=1)
    args = (spec, params, bank, ["add", "add", "remove"], ["starts_with", "palindrome", "all_same"], [[], [], ["all_same"]])
    plain = guided_edit(*args, steps=100, lr=1e-2)
    refined = guided_edit(*args, steps=100, lr=1e-2, check=check, rounds=2)
    zero = {k: torch.zeros_like(v) for k, v in plain.items()}
    failed = failing_parts(spec, params, plain, check, *args[3:]).any(dim=1)
    assert failed.any() and not failed.all(), failed  # 100 steps: the palindrome add still fails
    same = torch.stack([(plain[k] == refined[k]).flatten(1).all(dim=1) for k in plain]).all(dim=0)
    assert same.tolist() == (~failed).tolist()
    assert not any(torch.equal(plain[k], zero[k]) for k in plain)


@pytest.mark.parametrize("family, hold, rank", [("mlp", 0.05, 1), ("attention", 0.15, 5)])
def test_greedy_carriers_find_the_neuron_that_carries_the_behavior(family: str, hold: float, rank: int,
                                                                   single_thread) -> None:
    """In a model trained on two behaviors, the chosen carrier of one is (on fresh data) the neuron whose ablation
    hurts it most (attention: one of the `rank` that hurt it most of its 64 MLP neurons; the rule also counts the
    rows an ablation flips elsewhere, and there several neurons carry it nearly as much), while the other behavior
    moves little (attention: its MLP neurons are fewer per behavior);
    greedy choices nest (the best pair starts with the best one)."""
    spec = ArchSpec(family=family, depth=1, width=16, embed_dim=8)
    have = ["all_same", "contains_abc"]
    data = make_cohort_data([have], 7, 7, 2000, 100, [5])
    params = get_family(spec).init(spec, [5])
    train_cohort(spec, params, torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]),
                 torch.full((1,), 1e-2), 20, 64, [5])
    rank_bank, fresh = BehaviorBank.build(NAMES, 7, 7, 200, seed=0), BehaviorBank.build(NAMES, 7, 7, 200, seed=1)
    one = greedy_carriers(spec, params, rank_bank, [have], ["contains_abc"], k=1)
    two = greedy_carriers(spec, params, rank_bank, [have], ["contains_abc"], k=2)
    assert one.sum() == 1 and two.sum() == 2 and (two & one).sum() == 1

    def rates(mask: torch.Tensor) -> dict[str, float]:
        hooks = {name: resample(part, torch.Generator().manual_seed(0)) for name, part in split_neurons(spec, mask).items()}
        return measure(spec, params, fresh, [have], interventions=hooks)[0].behavior

    n = one.shape[1]  # mlp: 16 hidden neurons; attention: the 64 of its MLP block
    before = measure(spec, params, fresh, [have])[0].behavior
    drops = [before["contains_abc"] - rates(torch.eye(n, dtype=torch.bool)[j : j + 1])["contains_abc"] for j in range(n)]
    after = rates(one)
    assert before["contains_abc"] - after["contains_abc"] >= sorted(drops)[-rank] - 0.02 > 1.5 * np.mean(drops), drops
    assert abs(before["all_same"] - after["all_same"]) <= hold


@pytest.fixture(scope="module")
def edit_config(tiny_run, tmp_path_factory):
    """The tiny run's config with small edit settings (same zoo, so the run is reused)."""
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg["output_dir"] = str(tiny_run / "run")
    cfg["edit"] = {"editor": {"steps": 30, "batch_models": 16, "bank_per_behavior": 100}, "eval_per_behavior": 40,
                   "onepass": {"steps": 10, "batch_models": 8, "grad_rows": 64, "examples_per_model": 32},
                   "guided_steps": 20, "finetune_epochs": 1, "reconstruction_steps": 10, "max_test_models": 12,
                   "rank_one_steps": 5, "judge_max_sequences": 0}  # sampled banks: the whole space is tested apart
    path = tmp_path_factory.mktemp("edit") / "tiny_edit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_repair_names_the_behavior_flagged_furthest_below_its_typical_share(tmp_path: Path) -> None:
    """A behavior no model flags fully (typical share 0.5) is not named just because it is flagged little."""
    names = ["all_same", "no_repeats"]
    profiles = torch.tensor([[1.0, 0.6], [1.0, 0.0], [0.98, 0.5]])
    typical = typical_profile(profiles, [["all_same", "no_repeats"], ["all_same"], ["all_same", "no_repeats"]], names)
    torch.testing.assert_close(typical, torch.tensor([1.0, 0.5]))  # median (lower middle), over models trained on B
    # read as trained on both; all_same flagged 0.55 (far below 1.0), no_repeats 0.3 (0.2 below 0.5)
    enc = Encoded(torch.zeros(1, 3, 4), torch.zeros(1, 2), torch.tensor([[0.9, 0.9]]), torch.tensor([[0.55, 0.3]]))
    assert enc.corrupted_behavior(typical).tolist() == [0]
    assert enc.corrupted_behavior().tolist() == [1]  # against a share of 1 for every behavior, no_repeats looks worse

    editor = Editor(EditorConfig(d_hidden=8, rank=1, code_dim=4), names, d_token=4, latent_dim=2, vocab=7)
    editor.typical_profile = typical
    loaded, meta = load_editor(save_editor(editor, tmp_path / "editor"))
    torch.testing.assert_close(loaded.typical_profile, typical)
    assert meta["typical_profile"] == {"all_same": 1.0, "no_repeats": 0.5}


def test_editor_initial_weights_depend_on_its_seed_alone() -> None:
    """A Ray worker may have drawn random numbers before; the editor it builds must not depend on them."""
    cfg, names = EditorConfig(d_hidden=8, rank=1, code_dim=4), ["all_same", "palindrome"]
    first = Editor(cfg, names, d_token=4, latent_dim=2, vocab=7).state_dict()
    torch.rand(1000)
    second = Editor(cfg, names, d_token=4, latent_dim=2, vocab=7).state_dict()
    other = Editor(cfg.model_copy(update={"seed": 1}), names, d_token=4, latent_dim=2, vocab=7).state_dict()
    for k in first:
        torch.testing.assert_close(first[k], second[k])
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_edit_evaluate_scores_every_method_and_logs(edit_config, tiny_run) -> None:
    from cluster.cli import main

    uri = f"sqlite:///{tiny_run / 'mlflow.db'}"
    assert main(["edit", "evaluate", str(edit_config), "--tracking-uri", uri, "--no-progress"]) == 0
    report = json.loads((tiny_run / "run" / "report.json").read_text())
    ev = report["stages"]["edit_evaluate"]
    methods = {row["method"] for row in ev["by_op"]}
    assert {"decoder", "guided", "steering", "finetune_matched", "finetune_short", "guided_targeted", "guided_lowrank",
            "guided_subspace", "rank_one", "onepass", "onepass_refine", "onepass_shuffled", "retrieval"} <= methods
    assert {r["op"] for r in ev["by_op"] if r["method"] == "guided_subspace"} == {"remove"}  # it learns B's subspace
    assert {row["op"] for row in ev["by_op"]} == {"add", "remove"}  # the tiny zoo has no repair pairs
    assert ev["judged_on"] == "bank" and ev["judged_sequences"] > 0
    for row in ev["by_op"]:
        assert 0.0 <= row["success_rate"] <= 1.0 and row["n"] > 0
        assert 0.0 <= row["median_neurons_changed"] <= 1.0 and row["median_change"] >= 0.0
        if row["method"] == "rank_one":
            assert row["median_max_rank"] <= 1
        assert 0.0 <= row["self_check_rate"] <= 1.0
        assert (row["success_if_checked"] is None) == (row["self_check_rate"] == 0.0)
    assert ev["localization_behaviors"]["units"] > 0 and ev["localization_behaviors"]["subspace"] > 0
    assert report["stages"]["edit_train"]["interpreter_version"]
    moves = {(r["method"], r["op"]): r for r in ev["latent_moves"]}  # the edits read again in latent space
    assert {m for m, _ in moves} == {"guided", "onepass"} and all(r["n"] > 0 for r in moves.values())
    for plot in ("edit_success.png", "edit_per_behavior.png", "edit_localization.png", "edit_tradeoff.png",
                 "edit_latents.png"):
        assert (tiny_run / "run" / "plots" / plot).stat().st_size > 0

    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["zoolens"], filter_string="tags.mlflow.runName = 'edit_evaluate'")
    assert len(runs) >= 1
    assert "metrics.guided.add.success_rate" in runs.columns
    assert "metrics.guided_targeted.add.median_change" in runs.columns


def test_edit_one_model_writes_it_with_lineage(edit_config, tiny_run, capsys) -> None:
    from cluster.cli import main

    uri = f"sqlite:///{tiny_run / 'mlflow.db'}"
    store = ZooStore(tiny_run / "run" / "zoo")
    row = store.read_manifest().iloc[0]
    behavior = next(b for b in NAMES if b not in row["behaviors"])
    assert main(["edit", row["model_id"], "--add", behavior, "--config", str(edit_config), "--tracking-uri", uri,
                 "--no-progress"]) == 0
    edited = ZooStore(tiny_run / "run" / "edited").read_manifest().set_index("model_id")
    new = edited.loc[f"{row['model_id']}.add-{behavior}"]
    assert new["parent_id"] == row["model_id"] and new["edit_op"] == "add" and new["edit_behavior"] == behavior
    assert new["role"] == "edited" and new["interpreter_version"] and new["editor_version"]
    assert new["lineage"] == row["lineage"]  # an edit never lands on the other side of a split from its parent
    assert behavior in list(new["behaviors"])
    assert new["edit_self_check"] == "passed" or set(new["edit_self_check"].split(", ")) <= set(CHECK_PARTS)
    assert "self-check on the check bank (no labels)" in " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    _, params, _ = ZooStore(tiny_run / "run" / "edited").load_cohort(new["cohort_id"])  # hash-verified
    assert not np.allclose(params["w0"].numpy(), store.load_cohort(row["cohort_id"])[1]["w0"][int(row["index"])].numpy())


@pytest.mark.parametrize("argv, message", [
    (["--add", "telepathy"], "unknown behavior 'telepathy'"),
    (["--remove", "sorted_descending"], "not one of this zoo's behaviors"),
    ([], "say what to do to the model"),
])
def test_edit_bad_input_is_one_line(edit_config, tiny_run, capsys, argv, message) -> None:
    from cluster.cli import main

    uri = f"sqlite:///{tiny_run / 'mlflow.db'}"
    code = main(["edit", "m0000000", *argv, "--config", str(edit_config), "--tracking-uri", uri, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0]


def test_edit_unknown_model_is_one_line(edit_config, tiny_run, capsys) -> None:
    from cluster.cli import main

    uri = f"sqlite:///{tiny_run / 'mlflow.db'}"
    assert main(["edit", "nosuch", "--add", "palindrome", "--config", str(edit_config), "--tracking-uri", uri]) == 2
    assert "model 'nosuch' is not in the zoo" in capsys.readouterr().err


IN_PROCESS_EVALUATION = """
import json, sys
from pathlib import Path
from interpreter.editing.config import EditConfig
from interpreter.editing.context import open_context
from interpreter.editing.evaluate import evaluate_edits
from interpreter.editing.summary import summarize
from interpreter.editing.train import train_stage

run, editor_dir, cfg = Path(sys.argv[1]), Path(sys.argv[2]), EditConfig.model_validate(json.loads(sys.argv[3]))
ctx = open_context(run / "zoo", run / "interpreter", {})
train_stage(ctx, cfg, editor_dir)
result = evaluate_edits(ctx, cfg, editor_dir)
summary = summarize(result)
moves = [(e["method"], e["before"].shape, e["after"].shape, bool((e["before"] != e["after"]).any())) for e in result["latents"]]
print(json.dumps({"methods": sorted({r["method"] for r in summary["by_op"]}), "ray": "ray" in sys.modules,
                  "localization": summary["localization_behaviors"], "latent_methods": sorted({m[0] for m in moves}),
                  "latent_shapes_match": all(m[1] == m[2] for m in moves), "moved": sum(m[3] for m in moves),
                  "n_latents": len(moves), "n_scored": int(((result["verdicts"]["method"] == "guided")
                                                            | (result["verdicts"]["method"] == "onepass")).sum())}))
"""


def test_edit_evaluation_runs_in_process_without_ray(edit_config, tiny_run, tmp_path) -> None:
    """The editing library trains the editor and scores every method in a plain Python process: Ray is never
    imported (the pytest process has a Ray instance, so this runs in a fresh one)."""
    edit = yaml.safe_load(edit_config.read_text())["edit"]
    out = subprocess.run([sys.executable, "-c", IN_PROCESS_EVALUATION, str(tiny_run / "run"), str(tmp_path / "editor"),
                          json.dumps(edit)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ray"] is False
    assert {"decoder", "guided", "steering", "finetune_matched", "finetune_short"} <= set(result["methods"])
    assert result["localization"]["units"] > 0 and result["localization"]["subspace"] > 0
    # every guided and one-pass edit is read again in latent space (the figure's arrows); an edit moves its model
    assert result["latent_methods"] == ["guided", "onepass"] and result["n_latents"] == result["n_scored"] > 0
    assert result["latent_shapes_match"] and result["moved"] > 0
    assert (tmp_path / "editor" / "editor.json").exists()


ONE_EDIT_WITHOUT_RAY = """
import sys
from cluster.cli import main
code = main(sys.argv[1:])
import ray
print("ray initialized:", ray.is_initialized())
sys.exit(code)
"""


def test_edit_one_model_starts_no_ray_and_takes_overrides(edit_config, tiny_run, capsys) -> None:
    """``zoolens edit MODEL --add B`` runs in its own process without starting Ray, with key=value overrides; a
    bad override is one line naming the key."""
    from cluster.cli import main

    uri = f"sqlite:///{tiny_run / 'mlflow.db'}"
    row = ZooStore(tiny_run / "run" / "zoo").read_manifest().iloc[1]
    behavior = next(b for b in NAMES if b not in row["behaviors"])
    argv = [row["model_id"], "edit.guided_steps=5", "edit.guided_rounds=0", "--add", behavior, "--config",
            str(edit_config), "--tracking-uri", uri, "--no-progress"]
    out = subprocess.run([sys.executable, "-c", ONE_EDIT_WITHOUT_RAY, "edit", *argv], capture_output=True, text=True,
                         cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ray initialized: False" in out.stdout
    edited = ZooStore(tiny_run / "run" / "edited").read_manifest().set_index("model_id")
    assert edited.loc[f"{row['model_id']}.add-{behavior}", "parent_id"] == row["model_id"]

    assert main(["edit", row["model_id"], "edit.nosuch=1", "--add", behavior, "--config", str(edit_config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no field 'nosuch'" in err[0], err


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, ray_local) -> tuple[Path, Path]:
    """A tiny zoo of all three families with repair pairs, run end to end, and an edit config for its recurrent
    and attention models: (run directory, edit config)."""
    from cluster.cli import main

    out = tmp_path_factory.mktemp("mixed")
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg["output_dir"] = str(out / "run")
    cfg["zoo"].update(n_models=60, cohort_size=20, repair_fraction=0.2, architectures=[
        {"family": "mlp", "depth": 1, "width": 16, "embed_dim": 4},
        {"family": "gru", "depth": 1, "width": 8, "embed_dim": 4},
        {"family": "attention", "depth": 1, "width": 8, "embed_dim": 4}])
    cfg["evaluation"]["cross_family"] = False
    cfg["edit"] = {"editor": {"steps": 10, "batch_models": 8, "bank_per_behavior": 100}, "eval_per_behavior": 40,
                   "onepass": {"steps": 5, "batch_models": 8, "grad_rows": 64, "examples_per_model": 32},
                   "guided_steps": 20, "finetune_epochs": 1, "reconstruction_steps": 5, "families": ["gru", "attention"],
                   "judge_max_sequences": 0}  # sampled banks: a GRU's pass over all 823,543 sequences takes minutes
    path = out / "mixed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--no-progress"]) == 0
    return out, path


def test_edit_evaluate_scores_recurrent_and_attention_models(mixed_run) -> None:
    """The guided edit, task arithmetic, fine-tuning and localization run on every family; the decoders (MLP only)
    are left out of these families' rows rather than scored as failures."""
    from cluster.cli import main

    out, path = mixed_run
    assert main(["edit", "evaluate", str(path), "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--no-progress"]) == 0
    ev = json.loads((out / "run" / "report.json").read_text())["stages"]["edit_evaluate"]
    rows = {(r["method"], r["family"], r["op"]) for r in ev["by_family"]}
    for family in ("gru", "attention"):
        assert {("guided", family, op) for op in ("add", "remove")} <= rows
        assert ("finetune_short", family, "add") in rows and ("finetune_matched", family, "add") in rows
        assert not any(r[0] in ("decoder", "steering") for r in rows)
        assert ev["localization_by_family"][family]["units"]["behaviors"] > 0
        assert ev["localization_by_family"][family]["subspace"]["behaviors"] > 0
    assert "mlp" not in {r[1] for r in rows}  # edit.families leaves the MLPs out
    assert json.loads((out / "run" / "report.json").read_text())["stages"]["edit_train"]["n_decoder_train_models"] == 0


def test_edit_a_recurrent_model_guided_but_not_by_the_decoder(mixed_run, capsys) -> None:
    from cluster.cli import main

    out, path = mixed_run
    uri = f"sqlite:///{out / 'mlflow.db'}"
    manifest = ZooStore(out / "run" / "zoo").read_manifest()
    row = manifest[manifest["family"] == "gru"].iloc[0]
    behavior = next(b for b in NAMES if b not in row["behaviors"])
    common = ["--config", str(path), "--tracking-uri", uri, "--no-progress"]
    assert main(["edit", row["model_id"], "--add", behavior, "--method", "decoder", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one-pass decoder writes mlp weights only" in err[0], err
    assert main(["edit", row["model_id"], "--add", behavior, *common]) == 0
    new = ZooStore(out / "run" / "edited").read_manifest().set_index("model_id").loc[f"{row['model_id']}.add-{behavior}"]
    assert new["family"] == "gru" and new["parent_id"] == row["model_id"] and behavior in list(new["behaviors"])


def test_latent_positions_measure_moves_along_the_edited_behavior() -> None:
    """x is 0 at the mean latent of the models without the behavior and 1 at those with it: an add that lands a model
    on the with-mean moves it by +1 (the figure's and report's `median_move`), and by +3 along the first principal
    component (here the first axis, sign fixed); a behavior all models share has no axis."""
    from interpreter.editing.summary import latent_positions, latent_summary

    with_b, without_b = np.array([[2.0, 0.0], [4.0, 0.0]]), np.array([[0.0, 1.0], [0.0, -1.0]])
    moves = [{"method": "guided", "op": "add", "behavior": "palindrome", "model_id": f"w{i}", "assigned": [],
              "success": True, "before": z, "after": with_b.mean(axis=0)} for i, z in enumerate(without_b)]
    moves += [{"method": "guided", "op": "remove", "behavior": "palindrome", "model_id": f"h{i}", "assigned": ["palindrome"],
               "success": False, "before": z, "after": z} for i, z in enumerate(with_b)]
    xy = latent_positions(moves)
    np.testing.assert_allclose(xy[:2, 0, 0], [0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(xy[:2, 1, 0], [1.0, 1.0], atol=1e-9)
    assert latent_summary(moves) == [
        {"method": "guided", "op": "add", "n": 2, "passed": 2, "median_move": 1.0, "median_pc_move": 3.0,
         "pc_std_before": np.sqrt(2.75), "median_move_passed": 1.0, "median_move_failed": None},
        {"method": "guided", "op": "remove", "n": 2, "passed": 0, "median_move": 0.0, "median_pc_move": 0.0,
         "pc_std_before": np.sqrt(2.75), "median_move_passed": None, "median_move_failed": 0.0}]
    shared = [dict(m, behavior="all_same", assigned=["all_same"]) for m in moves]
    assert np.isnan(latent_positions(shared)).all() and latent_summary(shared) == []
