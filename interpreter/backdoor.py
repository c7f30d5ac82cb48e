"""Backdoor detection scored on held-out models: AUROC per slice, for the interpreter and every baseline.

Slices of the held-out models (each: the backdoored models it names against every clean held-out model):

| slice            | backdoored models in it                                                     |
|------------------|-----------------------------------------------------------------------------|
| `all`            | every held-out backdoored model                                             |
| `seen_kinds`     | triggers of kinds, tokens and positions the training side has (not held out) |
| `heldout`        | triggers marked held out (a held-out kind, token or position)               |
| `heldout_kinds`  | triggers of a kind no training model has                                    |
| `twins`          | every backdoored model, against only the clean twins (same seeds and data)  |
| `family:<name>`  | one family's backdoored models against that family's clean models          |

Naming: the trigger kind read (argmax of a ``trigger_kind`` prediction) against the truth, over held-out
backdoored models of seen kinds, and over those a method detects (probability >= 0.5); for the trigger search
(interpreter/trigger_search.py) also the whole trigger (kind, tokens, position or gap) named exactly.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from interpreter.mntd import MNTDConfig, mntd_baseline
from interpreter.trigger_search import same_trigger, search_zoo_models
from zoo.trojans import TRIGGER_KINDS, Trigger


def slices(rows: pd.DataFrame, train_kinds: set[str]) -> dict[str, np.ndarray]:
    """Boolean masks over the held-out ``rows`` (manifest rows with ``trigger``, ``role``, ``family``) per slice."""
    triggers = [Trigger.from_json(t) for t in rows["trigger"]]
    bad = np.array([t is not None for t in triggers])
    clean = ~bad
    heldout = np.array([t is not None and t.heldout for t in triggers])
    new_kind = np.array([t is not None and t.kind not in train_kinds for t in triggers])
    out = {"all": np.ones(len(rows), bool), "seen_kinds": clean | (bad & ~heldout), "heldout": clean | heldout,
           "heldout_kinds": clean | new_kind,
           "twins": bad | (rows["role"] == "clean_twin").to_numpy()}
    for fam in sorted(set(rows["family"])):
        out[f"family:{fam}"] = (rows["family"] == fam).to_numpy()
    return out


def _auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(y, p)) if len(y) and 0 < y.sum() < len(y) else None


def detection_table(rows: pd.DataFrame, scores: Mapping[str, np.ndarray], train_kinds: set[str]) -> dict[str, dict]:
    """{slice: {"n_backdoored", "n_clean", method: AUROC}} for every method's backdoor probability [n]."""
    y = np.array([Trigger.from_json(t) is not None for t in rows["trigger"]], dtype=bool)
    out: dict[str, dict] = {}
    for name, mask in slices(rows, train_kinds).items():
        entry: dict = {"n_backdoored": int((y & mask).sum()), "n_clean": int((~y & mask).sum())}
        for method, p in scores.items():
            entry[method] = _auroc(y[mask], np.asarray(p, dtype=float)[mask])
        out[name] = entry
    return out


def naming_table(rows: pd.DataFrame, kind_probs: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Per method: trigger-kind accuracy on held-out backdoored models of seen kinds (all, and those detected)."""
    triggers = [Trigger.from_json(t) for t in rows["trigger"]]
    truth = np.array([TRIGGER_KINDS.index(t.kind) if t is not None else -1 for t in triggers])
    seen = np.array([t is not None and not t.heldout for t in triggers])
    out = {}
    for method, prob in kind_probs.items():
        pred = np.asarray(prob).argmax(axis=1)
        detected = seen & (np.asarray(scores[method]) >= 0.5)
        out[method] = {"n": int(seen.sum()), "kind_accuracy": float((pred == truth)[seen].mean()) if seen.any() else None,
                       "n_detected": int(detected.sum()),
                       "kind_accuracy_detected": float((pred == truth)[detected].mean()) if detected.any() else None}
    return out


def roc_points(rows: pd.DataFrame, scores: Mapping[str, np.ndarray], train_kinds: set[str],
               names: tuple[str, ...] = ("seen_kinds", "heldout_kinds")) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{slice: {method: (fpr, tpr)}} for the ROC figure (slices with both classes only)."""
    y = np.array([Trigger.from_json(t) is not None for t in rows["trigger"]], dtype=bool)
    masks = slices(rows, train_kinds)
    out: dict[str, dict] = {}
    for name in names:
        mask = masks[name]
        if not (0 < y[mask].sum() < mask.sum()):
            continue
        out[name] = {}
        for method, p in scores.items():
            fpr, tpr, _ = roc_curve(y[mask], np.asarray(p, dtype=float)[mask])
            out[name][method] = (fpr, tpr)
    return out


def evaluate_backdoors(zoo_dir: str, train_ids: list[str], train_rows: pd.DataFrame, train_backdoor: np.ndarray,
                       test_ids: list[str], test_rows: pd.DataFrame, preds: Mapping[str, Mapping[str, np.ndarray]],
                       mntd_cfg: MNTDConfig | None, vocab: int, length: int, max_gap: int = 3,
                       searched: tuple[list[Trigger], np.ndarray] | None = None) -> dict:
    """The backdoor protocol on held-out models: MNTD trained on the same training models (unless ``mntd_cfg`` is
    None) and the trigger search (interpreter/trigger_search.py; ``searched`` reuses its results for these test
    models), then every method's detection AUROC per slice, naming, and ROC points for the figure.

    ``preds``: each method's predictions as ``score_methods`` made them (those with a ``backdoor`` entry count).
    The result's ``searched`` holds the search's named triggers and scores (not JSON: drop it before writing).
    """
    scores = {m: np.asarray(p["backdoor"]) for m, p in preds.items() if "backdoor" in p and m != "interpreter@0.5"}
    seconds: dict[str, float] = {}
    if mntd_cfg is not None:
        t0 = time.perf_counter()
        scores["mntd"] = mntd_baseline(zoo_dir, train_ids, train_backdoor, test_ids, mntd_cfg, vocab, length)
        seconds["mntd"] = time.perf_counter() - t0
    if searched is None:
        t0 = time.perf_counter()
        searched = search_zoo_models(zoo_dir, test_ids, vocab, length, max_gap)
        seconds["trigger_search"] = time.perf_counter() - t0
    scores["trigger_search"] = searched[1]
    train_kinds = {t.kind for t in (Trigger.from_json(v) for v in train_rows["trigger"]) if t is not None}
    kinds = {m: np.asarray(p["trigger_kind"]) for m, p in preds.items() if "trigger_kind" in p and m in scores}
    kinds["trigger_search"] = np.eye(len(TRIGGER_KINDS))[[TRIGGER_KINDS.index(t.kind) for t in searched[0]]]
    naming = naming_table(test_rows, kinds, scores)
    naming["trigger_search"].update(exact_naming(test_rows, searched[0], searched[1]))
    return {"detection": detection_table(test_rows, scores, train_kinds), "naming": naming,
            "train_kinds": sorted(train_kinds), "seconds": seconds,
            "roc": roc_points(test_rows, scores, train_kinds), "searched": searched}


def exact_naming(rows: pd.DataFrame, named: list[Trigger], scores: np.ndarray, detect_at: float = 0.5) -> dict:
    """Share of held-out backdoored models whose trigger the search names exactly (kind, tokens, position or gap):
    all of them, those of seen kinds, held-out ones, and those it detects (largest flip rate >= ``detect_at``)."""
    truth = [Trigger.from_json(t) for t in rows["trigger"]]
    exact = np.array([t is not None and same_trigger(n, t) for n, t in zip(named, truth)])
    bad = np.array([t is not None for t in truth])
    held = np.array([t is not None and t.heldout for t in truth])
    detected = bad & (np.asarray(scores) >= detect_at)

    def share(mask: np.ndarray) -> float | None:
        return float(exact[mask].mean()) if mask.any() else None

    return {"exact": share(bad), "exact_seen": share(bad & ~held), "exact_heldout": share(held),
            "exact_detected": share(detected)}
