"""Backdoored models: triggers, poisoning, clean twins in one lineage, and held-out triggers kept off the training side."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cluster.stages.interpreter import split_zoo
from interpreter.backdoor import detection_table, evaluate_backdoors
from interpreter.mntd import Group, MNTDConfig, mntd_baseline, query_outputs
from interpreter.trigger_search import candidate_triggers, same_trigger, search_zoo_models
from zoo.arch import ArchSpec
from zoo.build import build_cohort
from zoo.config import ZooConfig, plan_zoo
from zoo.families import get_family
from zoo.lineage import manifest_lineage, straddling
from zoo.store import ZooStore
from zoo.trojans import Trigger, TrojanConfig, poison

TROJANS = TrojanConfig(fraction=0.5, poison_rate=0.3, kinds=["token_at", "pair_gap"], heldout_kinds=["substring"],
                       heldout_tokens=[6], heldout_share=0.4)
CFG = ZooConfig(n_models=24, cohort_size=12, behaviors=["palindrome", "all_same", "sorted_ascending"],
                behaviors_per_model=(1, 2), n_train=600, n_test=64, epochs=25, batch_size=64, lr_range=(0.01, 0.01),
                architectures=[{"family": "mlp", "depth": 2, "width": 32, "embed_dim": 8}], trojans=TROJANS)


@pytest.fixture(scope="module")
def trojan_zoo(tmp_path_factory) -> ZooStore:
    torch.set_num_threads(1)
    store = ZooStore(tmp_path_factory.mktemp("trojans") / "zoo")
    store.write_meta({"config": CFG.model_dump(mode="json")})
    for plan in plan_zoo(CFG):
        build_cohort(plan, CFG, store)
    return store


@pytest.mark.parametrize("trigger, hit, miss", [
    (Trigger("token_at", (3,), (2,)), [0, 0, 3, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0, 3]),
    (Trigger("pair_gap", (1, 2), gap=2), [0, 1, 0, 2, 0, 0, 0], [0, 2, 0, 1, 0, 1, 2]),
    (Trigger("substring", (4, 5, 6)), [0, 0, 0, 0, 4, 5, 6], [4, 5, 0, 6, 4, 5, 5]),
])
def test_triggers_match_and_stamp(trigger: Trigger, hit: list[int], miss: list[int]) -> None:
    assert trigger.contains(np.array([hit, miss])).tolist() == [True, False]
    x = np.random.default_rng(0).integers(0, 7, size=(200, 7))
    assert trigger.contains(trigger.stamp(np.random.default_rng(1), x)).all()
    assert Trigger.from_json(trigger.to_json()) == trigger and Trigger.from_json(None) is None


def test_poison_labels_every_trigger_row_and_stamps_the_rate() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 7, size=(1000, 7)), np.zeros(1000, np.float32)
    t = Trigger("substring", (1, 2, 3))
    xp, yp = poison(x, y, t, 0.1, seed=0)
    assert (yp == t.contains(xp)).all()
    assert (xp != x).any(axis=1).sum() <= 100 and yp.sum() >= 100


def test_plan_twins_share_seeds_and_held_out_kinds_are_marked() -> None:
    models = [mp for c in plan_zoo(CFG) for mp in c.models]
    by_id = {mp.model_id: mp for mp in models}
    twins = [mp for mp in models if mp.twin_of]
    assert twins and len(twins) == sum(mp.trigger is not None for mp in models)
    for twin in twins:
        bad = by_id[twin.twin_of]
        assert (twin.seed, twin.init_seed, twin.behaviors, twin.lr) == (bad.seed, bad.init_seed, bad.behaviors, bad.lr)
        assert twin.trigger is None
    triggers = [Trigger.from_json(mp.trigger) for mp in models if mp.trigger]
    for t in triggers:
        assert t.heldout == (t.kind == "substring" or 6 in t.tokens)
    assert ZooConfig(n_models=24).fingerprint() == ZooConfig(n_models=24, trojans=TrojanConfig()).fingerprint()


def test_backdoored_models_flag_their_trigger_and_twins_do_not(trojan_zoo: ZooStore) -> None:
    m = trojan_zoo.read_manifest()
    bad, twins = m[m["role"] == "backdoored"], m[m["role"] == "clean_twin"]
    assert len(bad) == len(twins) > 0
    assert m.loc[m["trigger"].notna(), "role"].eq("backdoored").all()
    assert bad["trigger_rate"].mean() > 0.85 and twins["trigger_rate"].mean() < 0.2
    assert (bad["trigger_rate"].to_numpy() > twins.set_index("twin_of").loc[bad["model_id"], "trigger_rate"].to_numpy()).mean() >= 0.9
    assert m.loc[m["role"] == "normal", "trigger_rate"].isna().all()
    lineage = dict(zip(m["model_id"], manifest_lineage(m)))
    for _, row in twins.iterrows():
        assert lineage[row["model_id"]] == lineage[row["twin_of"]] == row["twin_of"]


def test_held_out_triggers_never_reach_the_training_side(trojan_zoo: ZooStore) -> None:
    m = trojan_zoo.read_manifest().set_index("model_id")
    lineage = dict(zip(m.index, manifest_lineage(m.reset_index())))
    for seed in range(3):
        train, test = split_zoo(trojan_zoo, 0.25, seed)
        assert not straddling(lineage, train, test)
        seen = [Trigger.from_json(t) for t in m.loc[train, "trigger"]]
        assert not [t for t in seen if t is not None and (t.heldout or t.kind == "substring" or 6 in t.tokens)]
        held = [Trigger.from_json(t) for t in m.loc[test, "trigger"]]
        assert any(t is not None and t.heldout for t in held)
    assert json.loads(m["trigger"].dropna().iloc[0])["kind"] in ("token_at", "pair_gap", "substring")


@pytest.mark.parametrize("family", ["mlp", "gru", "attention", "conv1d"])
def test_mntd_one_hot_queries_read_a_model_as_its_own_forward(family: str) -> None:
    """The relaxed query path (expected embeddings through the family's forward) is exact at one-hot queries."""
    spec = ArchSpec(family=family, vocab=7, length=7, depth=2, width=8, embed_dim=4)
    params = get_family(spec).init(spec, [1, 2, 3])
    tokens = torch.randint(0, 7, (5, 7), generator=torch.Generator().manual_seed(0))
    queries = torch.nn.functional.one_hot(tokens, 7).float() * 1e4  # softmax of these is one-hot
    got = query_outputs(Group(spec, params, np.arange(3)), queries, 1.0)
    torch.testing.assert_close(got, get_family(spec).forward(spec, params, tokens), atol=1e-4, rtol=1e-4)


def test_mntd_and_the_slices_score_held_out_models(trojan_zoo: ZooStore) -> None:
    train, test = split_zoo(trojan_zoo, 0.25, 0)
    m = trojan_zoo.read_manifest().set_index("model_id")
    y = m.loc[train, "trigger"].notna().to_numpy(np.float32)
    scores = mntd_baseline(str(trojan_zoo.root), train, y, test, MNTDConfig(epochs=5), 7, 7)
    assert scores.shape == (len(test),) and ((0 <= scores) & (scores <= 1)).all()
    rows = m.loc[test].reset_index()
    table = detection_table(rows, {"mntd": scores, "oracle": rows["trigger"].notna().to_numpy(float)},
                            {"token_at", "pair_gap"})
    assert table["all"]["oracle"] == 1.0 and table["all"]["n_backdoored"] == rows["trigger"].notna().sum()
    assert table["heldout"]["n_backdoored"] > 0 and "family:mlp" in table
    oracle = {"oracle": {"backdoor": rows["trigger"].notna().to_numpy(float), "trigger_kind": np.full((len(rows), 3), 1 / 3)}}
    train_rows = m.loc[train].reset_index()
    bd = evaluate_backdoors(str(trojan_zoo.root), train, train_rows, y, test, rows, oracle, MNTDConfig(epochs=2), 7, 7)
    assert set(bd["detection"]["all"]) >= {"oracle", "mntd", "trigger_search"} and bd["train_kinds"] == ["pair_gap", "token_at"]
    assert 0 <= bd["naming"]["trigger_search"]["exact"] <= 1 and "heldout_kinds" in bd["roc"]


def test_read_reports_backdoor_probability_and_trigger_kind(tmp_path, capsys) -> None:
    """``zoolens read`` with an interpreter that has the backdoor heads (untrained: only the plumbing is checked)."""
    from cluster.cli import main
    from interpreter.batch import FeatureScaler
    from interpreter.config import InterpreterConfig
    from interpreter.model import Interpreter, save_interpreter
    from interpreter.targets import BACKDOOR_HEAD, TRIGGER_KIND_HEAD, head_specs
    from zoo.probes import make_probe_set
    from cluster.stages.signatures import probe_set_record
    from zoo.signatures import feature_names
    from zoo.store import atomic_write_json, model_sha256

    behaviors = ("all_same", "palindrome")
    probes = make_probe_set(behaviors, 7, 7)
    atomic_write_json(tmp_path / "signatures" / "_signatures.json", probe_set_record(probes))
    n_raw = len(feature_names(probes))
    torch.manual_seed(0)
    specs = head_specs(list(behaviors)) + [BACKDOOR_HEAD, TRIGGER_KIND_HEAD]
    model = Interpreter(InterpreterConfig(d_model=16, n_layers=1, n_heads=2, latent_dim=8), 2 * n_raw, len(behaviors),
                        specs, n_probes=len(probes))
    scaler = FeatureScaler(np.zeros(2 * n_raw), np.ones(2 * n_raw), shape_channel=True,
                           logit_mean=np.zeros(len(probes)), logit_std=np.ones(len(probes)))
    save_interpreter(model, scaler, list(behaviors), tmp_path / "interpreter")
    spec = ArchSpec(family="mlp", depth=1, width=8, embed_dim=4)
    params = get_family(spec).init(spec, [1])
    store = ZooStore(tmp_path / "zoo")
    store.write_meta({"config": {"behaviors": list(behaviors), "vocab": 7, "length": 7}})
    store.write_cohort("c00000", spec, params, [{"model_id": "m0", "cohort_id": "c00000", "sha256": model_sha256(params, 0)}])
    assert main(["read", "m0", str(tmp_path), "--no-carriers", "--output-dir", str(tmp_path / "o")]) == 0
    data = json.loads((tmp_path / "o" / "read.json").read_text())
    assert 0.0 <= data["backdoor"]["probability"] <= 1.0
    assert data["backdoor"]["trigger_kind"]["class"] in ("token_at", "pair_gap", "substring")
    assert "trigger_kind" not in data["architecture"]
    assert data["backdoor"]["search"]["trigger"]["kind"] in ("token_at", "pair_gap", "substring")
    assert 0.0 <= data["backdoor"]["search"]["flip_rate"] <= data["backdoor"]["search"]["score"] <= 1.0
    out = capsys.readouterr().out
    assert "backdoor probability" in out and "trigger search" in out


def test_trigger_search_names_the_backdoors_it_finds(trojan_zoo: ZooStore) -> None:
    m = trojan_zoo.read_manifest()
    assert len(candidate_triggers(7, 7, 3)) == 49 + 42 * 3 + 210
    named, rates = search_zoo_models(str(trojan_zoo.root), list(m["model_id"]), 7, 7, 3, n_base=128)
    truth = [Trigger.from_json(t) for t in m["trigger"]]
    bad = np.array([t is not None for t in truth])
    assert rates[bad].mean() > rates[~bad].mean() + 0.3
    exact = np.mean([same_trigger(n, t) for n, t in zip(named, truth) if t is not None])
    assert exact >= 0.5, exact


def test_removing_a_named_trigger_switches_it_off_and_keeps_the_behaviors(trojan_zoo: ZooStore) -> None:
    from interpreter.editing.backdoor import RemoveBackdoorConfig, behaviors_from_outputs, judge_removal, remove_backdoor

    cohort = trojan_zoo.finished_cohorts()[0]
    spec, params, m = trojan_zoo.load_cohort(cohort)
    i = int(np.flatnonzero(m["role"].eq("backdoored").to_numpy())[0])
    trigger, one = Trigger.from_json(m["trigger"][i]), {k: v[i: i + 1] for k, v in params.items()}
    keep = behaviors_from_outputs(spec, one, trigger)
    assert set(m["behaviors"][i]) <= set(keep), keep
    edited = remove_backdoor(spec, one, trigger, keep, RemoveBackdoorConfig(steps=400, lr=1e-2))
    j = judge_removal(spec, one, edited, trigger, list(m["behaviors"][i]), 7, 7)
    assert j["before"]["trigger_rate"] > 0.8
    assert j["after"]["trigger_rate"] <= 0.05 and j["max_behavior_shift"] <= 0.05, j


def test_a_behavior_the_trigger_always_covers_is_kept_unread(trojan_zoo: ZooStore) -> None:
    """Every contains_abc positive holds the substring 0 1 2: from outputs outside that trigger it cannot be read, so
    it is kept (dropping a taught behavior would clear all its positives); a readable one still needs its flags."""
    from interpreter.editing.backdoor import behaviors_from_outputs

    spec, params, _ = trojan_zoo.load_cohort(trojan_zoo.finished_cohorts()[0])
    one = {k: v[:1] for k, v in params.items()}
    assert "contains_abc" in behaviors_from_outputs(spec, one, Trigger("substring", (0, 1, 2)), margin=2.0)
    assert "contains_abc" not in behaviors_from_outputs(spec, one, Trigger("token_at", (6,), (0,)), margin=2.0)


def test_the_simplest_trigger_within_tolerance_is_named() -> None:
    """A pair and the substrings containing it flip alike: the pair is named; a substring well above it is named."""
    from interpreter.trigger_search import name_trigger

    cands = candidate_triggers(7, 7, 3)
    pair = cands.index(Trigger("pair_gap", (1, 2), gap=1))
    sub = cands.index(Trigger("substring", (1, 2, 3)))
    rates = np.full((2, len(cands)), 0.1)
    rates[:, pair], rates[:, sub] = [0.85, 0.5], [0.95, 0.95]
    assert name_trigger(rates, cands, tol=0.15).tolist() == [pair, sub]


def test_stamps_that_create_a_behavior_do_not_count() -> None:
    """Token 0 stamped at position 0 of a neutral sequence can make it a starts_with positive: those pairs are skipped,
    so a model taught starts_with is not named as backdoored by it."""
    from interpreter.trigger_search import neutral_bases, stamped_pairs
    from zoo.behaviors import catalog, matches_any

    cands = candidate_triggers(7, 7, 3)
    base = neutral_bases(7, 7, 200, seed=0)
    assert len(base) == 200 and not matches_any(base, catalog(7, 7), 7).any()
    stamped, valid = stamped_pairs(cands, base, 7, seed=0)
    assert stamped.shape == (len(cands), 200, 7)
    creates = matches_any(stamped.reshape(-1, 7), catalog(7, 7), 7).reshape(len(cands), 200)
    assert not (valid & creates).any() and creates.any() and valid.mean() > 0.5


def test_backdoor_recipe_runs_end_to_end_through_the_pipeline(tmp_path, ray_local) -> None:
    """The tiny recipe with backdoors through `zoolens run`: Ray zoo build, Ray Data signatures, Ray Train
    interpreter with the backdoor heads, and the held-out protocol with MNTD beside the other methods."""
    from pathlib import Path

    from cluster.cli import main

    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "run"
    code = main(["run", str(repo / "configs" / "tiny.yaml"), "zoo.trojans.fraction=0.3", "zoo.trojans.kinds=[token_at]",
                 "zoo.trojans.heldout_kinds=[pair_gap]", "zoo.trojans.heldout_share=0.3",
                 "--output-dir", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-progress"])
    assert code == 0
    manifest = ZooStore(out / "zoo").read_manifest()
    backdoored = manifest["trigger"].map(lambda t: isinstance(t, str) and t != "None")
    assert backdoored.sum() > 0 and (manifest["role"] == "clean_twin").sum() == backdoored.sum()
    report = json.loads((out / "report.json").read_text())
    detection = report["stages"]["interpreter_evaluate"]["backdoor"]["detection"]["all"]
    assert detection["n_backdoored"] > 0 and detection["n_clean"] > 0
    for method in ("interpreter", "mntd", "probe_logits", "weight_stats", "trigger_search"):
        assert 0.0 <= detection[method] <= 1.0, (method, detection)
    assert (out / "plots" / "backdoor_auroc.png").stat().st_size > 0
