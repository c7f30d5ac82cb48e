"""The edit evaluation as plain JSON: success per method and operation, per family and behavior, localization."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from interpreter.editing.protocol import success_table


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Success rates per method and operation (with the median weight change, share of neurons changed and rank, and
    edits per second where the verdicts time the methods),
    per family and behavior, what the edits were judged on, and the localization verdict per method (units,
    subspace) and family, as plain JSON."""
    v, loc = result["verdicts"], result["localization"]
    v = v.assign(checked_success=v["success"] & v["self_check"], agree=v["success"] == v["self_check"])
    by_op = (v.groupby(["method", "op"])
             .agg(n=("success", "size"), success_rate=("success", "mean"), mean_change=("change", "mean"),
                  median_change=("change", "median"), median_neurons_changed=("neurons_changed", "median"),
                  median_max_rank=("max_rank", "median"), check_agrees=("agree", "mean"),
                  mean_target_rate=("target_rate", "mean"), self_check_rate=("self_check", "mean"),
                  checked=("self_check", "sum"), checked_success=("checked_success", "sum"),
                  **({"edits_per_second": ("seconds", lambda s: float(len(s) / s.sum()) if s.sum() > 0 else None)}
                     if "seconds" in v else {}))
             .reset_index())
    # how far the label-free self-check can be trusted: the protocol's verdict on the edits that pass it
    by_op["success_if_checked"] = by_op["checked_success"] / by_op["checked"].where(by_op["checked"] > 0)
    by_op = by_op.drop(columns=["checked", "checked_success"]).to_dict(orient="records")
    for row in by_op:  # None, not NaN, where no edit passed its check (report.json stays strict JSON)
        row["success_if_checked"] = None if pd.isna(row["success_if_checked"]) else float(row["success_if_checked"])
    by_family = (v.groupby(["method", "family", "op"]).agg(n=("success", "size"), success_rate=("success", "mean"),
                                                          median_change=("change", "median"),
                                                          median_neurons_changed=("neurons_changed", "median"))
                 .reset_index().to_dict(orient="records"))
    per_behavior = {m: success_table(g.to_dict(orient="records")) for m, g in v.groupby("method")}
    loc_by_family = {f: {m: {"passes": int(gm["passes"].sum()), "behaviors": len(gm)} for m, gm in g.groupby("method")}
                     for f, g in loc.groupby("family")} if len(loc) else {}
    judged = sorted(set(v["judged_on"])) if "judged_on" in v else []
    return {"judged_on": judged[0] if len(judged) == 1 else judged,
            "judged_sequences": int(v["judged_sequences"].max()) if len(v) else 0,
            "check_agrees": float(v["agree"].mean()) if len(v) else None,  # self-check verdict == protocol verdict
            "by_op": by_op, "by_family": by_family, "per_behavior": per_behavior, "training_ceiling": result["ceiling"],
            "localization": loc.to_dict(orient="records"),
            "localization_passes": {m: int(g["passes"].sum()) for m, g in loc.groupby("method")} if len(loc) else {},
            "localization_behaviors": {m: len(g) for m, g in loc.groupby("method")} if len(loc) else {},
            "localization_by_family": loc_by_family}


def latent_positions(moves: list[dict[str, Any]]) -> np.ndarray:
    """Where edits move models in the interpreter's latent space, as [edit, before/after, x/y]: x along the edited
    behavior's direction (0 = the mean latent of the edited models without it, 1 = of those with it; NaN where all
    or none have it), y along the first principal component of the models' latents before editing (its
    largest entry positive).

    ``moves``: :func:`interpreter.editing.evaluate.latent_moves` rows (method, op, behavior, model_id, assigned,
    success, before, after)."""
    models: dict[str, tuple[np.ndarray, set[str]]] = {}
    for e in moves:
        models.setdefault(e["model_id"], (np.asarray(e["before"], dtype=float), set(e["assigned"])))
    z = np.stack([v[0] for v in models.values()])
    center = z.mean(axis=0)
    pc = np.linalg.svd(z - center, full_matrices=False)[2][0]
    pc *= np.sign(pc[np.argmax(np.abs(pc))])  # a fixed sign (largest entry positive), so moves compare across runs
    axes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for b in {e["behavior"] for e in moves}:
        has = np.array([b in v[1] for v in models.values()])
        if has.any() and not has.all():
            lo, d = z[~has].mean(axis=0), z[has].mean(axis=0)
            d -= lo
            axes[b] = (lo, d / max(float(d @ d), 1e-12))
    out = np.full((len(moves), 2, 2), np.nan)
    for k, e in enumerate(moves):
        if e["behavior"] in axes:
            lo, unit = axes[e["behavior"]]
            for w, key in enumerate(("before", "after")):
                v = np.asarray(e[key], dtype=float)
                out[k, w] = (v - lo) @ unit, (v - center) @ pc
    return out


def latent_summary(moves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and operation: edits, how many pass, and the median move along the edited behavior's direction
    (:func:`latent_positions`; +1 is the distance from the mean model without the behavior to the mean one with it)
    and along the latents' first principal component (a move every edit shares, whatever its behavior; beside the
    unedited models' standard deviation along it, for scale)."""
    if not moves:
        return []
    xy = latent_positions(moves)
    if np.isnan(xy).all():  # no edited behavior splits the models: no axis to measure along
        return []
    move, pc_move = xy[:, 1, 0] - xy[:, 0, 0], xy[:, 1, 1] - xy[:, 0, 1]
    first: dict[str, int] = {}  # each model's first edit: its unedited position, counted once
    for k, e in enumerate(moves):
        first.setdefault(e["model_id"], k)
    spread = float(np.nanstd(xy[list(first.values()), 0, 1]))  # the unedited spread along the component, for scale
    out = []
    for method, op in sorted({(e["method"], e["op"]) for e in moves}):
        sel = [k for k, e in enumerate(moves) if (e["method"], e["op"]) == (method, op) and not np.isnan(move[k])]
        if sel:
            passed = [k for k in sel if moves[k]["success"]]
            failed = [k for k in sel if not moves[k]["success"]]
            out.append({"method": method, "op": op, "n": len(sel), "passed": len(passed),
                        "median_move": _median(move[sel]), "median_pc_move": _median(pc_move[sel]),
                        "pc_std_before": spread, "median_move_passed": _median(move[passed]),
                        "median_move_failed": _median(move[failed])})
    return out


def _median(values: np.ndarray) -> float | None:
    """The median as a float, None for no values (report.json stays strict JSON)."""
    return float(np.median(values)) if len(values) else None
