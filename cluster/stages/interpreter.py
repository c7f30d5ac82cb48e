"""Stages 3 and 4: train the interpreter on a split by lineage (zoo/lineage.py), then score it on held-out
models beside baselines computed in the same run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import ray.train
import torch

from interpreter.baselines import (
    majority_baseline,
    neuron_stats_baseline,
    probe_logit_baseline,
    shuffled_label_baseline,
    weight_stats_baseline,
)
from interpreter.backdoor import evaluate_backdoors
from interpreter.config import InterpreterConfig
from interpreter.metrics import evaluate_heads, headline_metrics
from interpreter.model import load_interpreter, save_interpreter
from interpreter.parallel import DataParallel
from interpreter.probe_accuracy import ProbeLayout
from interpreter.stream import ScalerAccumulator, TargetTable, profile_sample, train_streamed
from interpreter.targets import HeadSpec, build_targets, specs_for
from interpreter.train import predict, split_by_model, train_interpreter
from zoo.errors import ZoolensError
from zoo.lineage import LINK_COLUMNS, manifest_lineage, split_by_lineage
from zoo.store import ZooStore, atomic_write_json
from zoo.trojans import heldout_triggers
from zoo.version import code_version

from cluster.config import EvalConfig
from cluster.runtime import cluster_cpus, cluster_gpus
from cluster.stages.signature_data import iter_record_chunks, ordered, ordered_options, read_split_chunks, split_dataset
from cluster.stages.signatures import read_probe_set, read_signature_meta, read_signatures

CHUNK_ROWS = 4096  # signature rows a process holds at once while training or scanning (bounded memory per process)


class InterpreterStageError(ZoolensError):
    """The interpreter cannot be trained or evaluated with what is on disk."""


def split_zoo(store: ZooStore, test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Held-out models the interpreter never sees while training: a seeded split by lineage (zoo/lineage.py),
    so no repair pair, sibling group or backdoored model and its twin has a model on each side; lineages with a
    held-out backdoor trigger (zoo/trojans.py) are all held out."""
    columns = _lineage_columns(store)
    has_trigger = "trigger" in store.manifest_columns()
    manifest = store.read_manifest(columns=columns + (["trigger"] if has_trigger else []))
    lineage = manifest_lineage(manifest)
    forced = set(lineage[heldout_triggers(manifest["trigger"])]) if has_trigger else set()
    return split_by_lineage(list(manifest["model_id"]), list(lineage), test_fraction, seed, forced_test=forced)


def _lineage_columns(store: ZooStore) -> list[str]:
    """The manifest columns a model's lineage is read from (older zoos lack some)."""
    present = set(store.manifest_columns())
    return ["model_id"] + [c for c in ("lineage", *LINK_COLUMNS) if c in present]


MANIFEST_COLUMNS = ["model_id", "behaviors", "family", "arch", "depth", "width", "lr", "test_acc", "role"]
OPTIONAL_MANIFEST_COLUMNS = ["core_fraction", "trigger"]  # only zoos built with the antitraining regime / trojans have them


def _manifest_columns(store: ZooStore) -> list[str]:
    """MANIFEST_COLUMNS plus whichever optional columns this zoo's manifest has."""
    present = set(store.manifest_columns())
    return MANIFEST_COLUMNS + [c for c in OPTIONAL_MANIFEST_COLUMNS if c in present]


def _load_split(zoo_dir: str, sig_dir: str, ids: list[str]) -> tuple[list[dict], dict[str, np.ndarray], list[str], pd.DataFrame]:
    """Signature records, every head's targets, the behavior names and manifest rows for the given models."""
    records = read_signatures(Path(sig_dir), ids)
    targets, behaviors, rows = _split_targets(zoo_dir, [r["model_id"] for r in records])
    for record, lineage in zip(records, rows["lineage"]):
        record["lineage"] = lineage  # the interpreter's validation split keeps lineages whole too
    return records, targets, behaviors, rows


def probe_layout(sig_dir: str | Path, cfg: InterpreterConfig) -> ProbeLayout | None:
    """What the interpreter's accuracy estimate needs of the probe set the signatures were read through; None when
    cfg.probe_accuracy and cfg.probe_profile are off, so nothing reads the probe set (or needs it recorded)."""
    return ProbeLayout.of(read_probe_set(Path(sig_dir))) if cfg.probe_accuracy or cfg.probe_profile else None


def signature_feature_names(sig_dir: str | Path) -> list[str] | None:
    """The signature's feature column names (what InterpreterConfig.feature_set selects from)."""
    return read_signature_meta(Path(sig_dir)).get("feature_names")


def resolve_num_workers(num_workers: int | str, gpus: int) -> int:
    """Ray Train workers for InterpreterConfig.num_workers: 'auto' means one per GPU (at least 1)."""
    return max(1, gpus) if num_workers == "auto" else int(num_workers)


def _subset(records: list[dict], targets: dict[str, np.ndarray], mask: np.ndarray) -> tuple[list[dict], dict[str, np.ndarray]]:
    idx = np.flatnonzero(mask)
    return [records[i] for i in idx], {k: v[idx] for k, v in targets.items()}


def _split_targets(zoo_dir: str | Path, ids: list[str]) -> tuple[dict[str, np.ndarray], list[str], pd.DataFrame]:
    """Every head's targets, the behavior names and the manifest rows (with lineage) of `ids`, in that order:
    the manifest only, no signatures (a few numbers per model)."""
    store = ZooStore(zoo_dir)
    behaviors = store.read_meta()["config"]["behaviors"]
    manifest = store.read_manifest(columns=_manifest_columns(store) + _lineage_columns(store)[1:])
    rows = manifest.assign(lineage=manifest_lineage(manifest)).set_index("model_id").loc[ids].reset_index()
    return build_targets(rows, behaviors), behaviors, rows


@dataclass
class FitPlan:
    """What interpreter training needs before it reads a signature: the split by lineage, the validation split
    inside its training side (by lineage too), and the training side's targets (the manifest only)."""

    train_ids: list[str]
    test_ids: list[str]
    fit_ids: list[str]
    val_ids: list[str]
    table: TargetTable
    specs: list[HeadSpec]
    behaviors: list[str]


def plan_fit(zoo_dir: str | Path, cfg: InterpreterConfig, test_fraction: float, seed: int) -> FitPlan:
    """The split (split_zoo), the fit/validation split of its training side and their targets."""
    train_ids, test_ids = split_zoo(ZooStore(zoo_dir), test_fraction, seed)
    targets, behaviors, rows = _split_targets(zoo_dir, train_ids)
    fit_idx, val_idx = split_by_model(len(train_ids), cfg.val_fraction, cfg.seed, [str(x) for x in rows["lineage"]])
    return FitPlan(train_ids, test_ids, [train_ids[i] for i in fit_idx], [train_ids[i] for i in val_idx],
                   TargetTable.of(train_ids, targets), specs_for(targets, behaviors), behaviors)


def _scan_fit_side(sig_dir: Path, fit_ids: list[str], cfg: InterpreterConfig, table: TargetTable,
                   chunks: Iterable[list[dict]] | None = None) -> tuple[ScalerAccumulator, tuple[np.ndarray, np.ndarray] | None]:
    """One streamed pass over the fit side: the feature scaler's statistics, and the sample the behavior profile
    and the probe skip are fit on (raw probe logits and behavior targets of at most PROFILE_SAMPLE models, in
    model-id order). `chunks`: the fit side's records (default: streamed through Ray Data)."""
    acc = ScalerAccumulator(cfg, signature_feature_names(sig_dir))
    sample = profile_sample(fit_ids, cfg.seed) if cfg.probe_profile or cfg.probe_skip_fit else set()
    picked: list[tuple[str, np.ndarray]] = []
    if chunks is None:
        chunks = iter_record_chunks(ordered(split_dataset(sig_dir, fit_ids)), CHUNK_ROWS)
    for chunk in chunks:
        chunk.sort(key=lambda r: r["model_id"])  # a chunk's sums in model-id order, as FeatureScaler.fit adds them
        acc.add(chunk)
        picked += [(r["model_id"], np.nan_to_num(np.asarray(r["logits"], dtype=np.float32))) for r in chunk
                   if r["model_id"] in sample]
    if acc.n == 0:
        raise InterpreterStageError(f"no signatures in {sig_dir} for the interpreter's training models")
    if not picked:
        return acc, None
    picked.sort(key=lambda p: p[0])
    raw = np.stack([p[1] for p in picked])
    return acc, (raw, table.take([p[0] for p in picked])["behaviors"])


def epoch_shuffle_seed(cfg: InterpreterConfig, n_fit: int, epoch: int) -> int | None:
    """The seed an epoch's fit side is shuffled with when it spans more than one chunk; None for a single chunk,
    which is read once, in model-id order, and kept (so it trains exactly as the in-memory loop)."""
    return cfg.seed * 1_000_003 + epoch if n_fit > CHUNK_ROWS else None


def predict_split(model: Any, scaler: Any, sig_dir: str | Path, model_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The interpreter's predictions (train.predict's keys) for `model_ids`, in that order, read CHUNK_ROWS signature
    rows at a time in this process (read_split_chunks): memory is one chunk plus a few numbers per model."""
    parts, seen = [], []
    for chunk in read_split_chunks(sig_dir, model_ids, CHUNK_ROWS):
        parts.append(predict(model, scaler, chunk))
        seen += [r["model_id"] for r in chunk]
    if not parts:
        raise InterpreterStageError(f"no signatures in {sig_dir} for the {len(model_ids)} models asked for")
    found = TargetTable.of(seen, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    try:
        return found.take(list(model_ids))
    except KeyError:
        raise InterpreterStageError(f"{len(set(model_ids) - set(seen))} of the {len(model_ids)} models have no "
                                    f"signature in {sig_dir}") from None


def _quiet_train_logs() -> None:
    """Ray Train logs one line per report otherwise."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    with contextlib.suppress(ImportError):  # Ray Train v2 names its report logger by file path, not "ray.train..."
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop: stream this worker's shard of the fit side each epoch and fit the interpreter
    (data-parallel over the workers), checkpoint every epoch (resumable), and report rank 0's best state at the end."""
    import ray.train.torch
    from ray.train import Checkpoint

    from interpreter.batch import FeatureScaler

    _quiet_train_logs()
    torch.set_num_threads(config["threads"])
    cfg: InterpreterConfig = config["cfg"]
    ctx = ray.train.get_context()
    parallel = DataParallel(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.prepare_model)
    rank0 = parallel.is_main
    previous = ray.train.get_checkpoint()
    resume = None
    if previous is not None:
        with previous.as_directory() as d:
            if (Path(d) / "train_summary.json").exists():  # this run already finished: hand its result back
                if rank0:
                    with tempfile.TemporaryDirectory() as tmp:
                        previous.to_directory(tmp)
                        ray.train.report(json.loads((Path(tmp) / "train_summary.json").read_text()),
                                         checkpoint=Checkpoint.from_directory(tmp))
                else:
                    ray.train.report({})
                return
            resume = torch.load(Path(d) / "train_state.pt", weights_only=False)
    run_id = config.get("run_id")
    if run_id and rank0:
        import mlflow

        mlflow.set_tracking_uri(config["tracking_uri"])

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if run_id and rank0:
            from cluster.tracking.runs import log_epoch_metrics

            log_epoch_metrics(run_id, metrics, step=epoch)
            if epoch % 10 == 0:
                shown = {k: metrics[k] for k in ("train_loss", "val_loss", "val_mean_balanced_accuracy") if k in metrics}
                # to the process's own stdout: Ray Train v2 patches print() in its workers to tee to the stream
                # and log the line as well, so each line reached the driver twice
                print(f"interpreter epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()),
                      file=sys.__stdout__, flush=True)

    def on_checkpoint(epoch: int, state: dict[str, Any]) -> None:
        metrics = {"epoch": epoch, **state["history"][-1]}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank0:
                torch.save(state, Path(tmp) / "train_state.pt")
                checkpoint = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if config.get("halt_after_epoch") == epoch:  # tests: a driver killed after this epoch's checkpoint
            raise RuntimeError(f"halted after epoch {epoch}")

    shard = ray.train.get_dataset_shard("fit")
    val = ray.train.get_dataset_shard("val") if config["has_val"] else None
    def fit_chunks(epoch: int) -> Any:
        seed = epoch_shuffle_seed(cfg, config["n_fit"], epoch)  # beyond one chunk, also mix neighbouring cohorts' rows
        shuffle = {} if seed is None else {"local_shuffle_buffer_size": 2 * CHUNK_ROWS, "local_shuffle_seed": seed}
        return iter_record_chunks(shard, CHUNK_ROWS, **shuffle)

    scaler = FeatureScaler.from_state_dict(resume["scaler"]) if resume else config["scaler"]
    table = TargetTable(config["target_ids"], config["targets"])
    t0 = time.perf_counter()
    result = train_streamed(fit_chunks, (lambda: iter_record_chunks(val, CHUNK_ROWS)) if val is not None else None,
                            table, config["fit_ids"], scaler, cfg, config["behaviors"], config["specs"],
                            profile=config["profile"], parallel=parallel,
                            probe_layout=probe_layout(config["sig_dir"], cfg), on_epoch=on_epoch,
                            on_checkpoint=on_checkpoint, resume=resume)
    summary = {"seconds": time.perf_counter() - t0, "best_epoch": result.best_epoch,
               "epochs_run": len(result.history), "n_train_models": config["n_train"],
               "num_workers": parallel.world_size, "models_per_rank": result.models_per_rank,
               "resumed_from_epoch": None if resume is None else int(resume["epoch"])}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank0:
            save_interpreter(result.model, result.scaler, config["behaviors"], tmp)
            atomic_write_json(Path(tmp) / "train_summary.json", summary)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(summary, checkpoint=checkpoint)


def _run_name(cfg: InterpreterConfig, train_ids: list[str], sig_meta: dict[str, Any], workers: int) -> str:
    """The Ray Train run's name: the same config, split, signatures, workers and code give the same name, so a rerun
    of the same command finds the run's checkpoints and resumes from the latest (or returns its finished result);
    changed code starts afresh rather than resume a model the code would no longer make."""
    h = hashlib.sha256(json.dumps({"cfg": cfg.model_dump(mode="json"), "workers": workers, "code": code_version(),
                                   "signatures": [sig_meta.get(k) for k in ("probe_sha256", "zoo_fingerprint", "extractor_sha256")]},
                                  sort_keys=True).encode())
    for model_id in train_ids:
        h.update(model_id.encode() + b"\0")
    return f"interpreter-{h.hexdigest()[:16]}"


def train_stage(zoo_dir: Path, sig_dir: Path, out_dir: Path, cfg: InterpreterConfig, test_fraction: float, seed: int,
                tracking_uri: str | None = None, run_id: str | None = None,
                halt_after_epoch: int | None = None) -> dict[str, Any]:
    """Split the zoo by lineage and fit the interpreter with Ray Train on the training side, streamed from Ray Data.

    The driver reads the manifest (targets, the split, the validation split by lineage) and makes one streamed
    pass over the fit side's signatures (the scaler, the behavior profile's sample); the signatures go to the
    workers as Ray Data datasets: each worker streams its own shard of the fit side every epoch (``CHUNK_ROWS`` rows
    at a time) and rank 0 the validation side. ``cfg.num_workers`` data-parallel workers (DDP: gloo on CPU, nccl
    on GPU; one by default, one per GPU with ``auto``) share the CPUs left beside the Train controller, and a GPU
    each when the cluster has GPUs. Every epoch is checkpointed under ``<run dir>/ray_train/<run name>``; rerunning
    the same command resumes from the latest checkpoint. The best state is copied to ``out_dir``.
    ``halt_after_epoch`` (tests) fails the run after that epoch's checkpoint, as a killed driver would leave it.
    """
    from ray.train import CheckpointConfig, DataConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    sig_meta = read_signature_meta(sig_dir)  # fail here, in one line, rather than inside a Train worker
    plan = plan_fit(zoo_dir, cfg, test_fraction, seed)
    train_ids, test_ids, fit_ids, val_ids = plan.train_ids, plan.test_ids, plan.fit_ids, plan.val_ids
    table, specs, behaviors = plan.table, plan.specs, plan.behaviors
    gpus = cluster_gpus()
    workers = resolve_num_workers(cfg.num_workers, gpus)
    if gpus and workers > gpus:
        raise InterpreterStageError(f"interpreter.num_workers={workers} but the cluster has {gpus} GPUs (one per worker)")
    if len(fit_ids) < workers:
        raise InterpreterStageError(f"{len(fit_ids)} training models cannot be shared by {workers} workers")
    acc, profile = _scan_fit_side(sig_dir, fit_ids, cfg, table)
    datasets = {"fit": split_dataset(sig_dir, fit_ids)}
    if val_ids:
        datasets["val"] = split_dataset(sig_dir, val_ids)
    cpus = max(1, cluster_cpus() - 1) / workers  # leave one CPU for the Train controller
    config = {"sig_dir": str(sig_dir), "cfg": cfg, "threads": max(1, int(cpus)), "tracking_uri": tracking_uri,
              "run_id": run_id, "scaler": acc.scaler(), "target_ids": table.ids, "targets": table.y, "fit_ids": fit_ids,
              "behaviors": behaviors, "specs": specs, "profile": profile, "has_val": bool(val_ids),
              "n_fit": len(fit_ids), "n_train": len(train_ids), "halt_after_epoch": halt_after_epoch}
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus >= 1, resources_per_worker={"CPU": cpus}),
        datasets=datasets,
        # shards in a fixed order (no locality preference: which node a block was read on must not pick its worker)
        dataset_config=DataConfig(datasets_to_split=["fit"], execution_options=ordered_options(), enable_shard_locality=False),
        run_config=RunConfig(name=_run_name(cfg, train_ids, sig_meta, workers), storage_path=str(out_dir.parent / "ray_train"),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    try:
        result = trainer.fit()
        error = result.error
    except Exception as exc:  # noqa: BLE001 - Ray Train v2 raises a failed run instead of returning it
        error = exc
    if error is not None:
        failures = getattr(error, "worker_failures", None) or {}
        raise next(iter(failures.values()), error) from None  # the worker's own exception, when there is one
    out_dir.mkdir(parents=True, exist_ok=True)
    result.checkpoint.to_directory(str(out_dir))
    info = json.loads((out_dir / "train_summary.json").read_text())
    atomic_write_json(out_dir / "split.json", {"train": train_ids, "test": test_ids, "seed": seed,
                                               "test_fraction": test_fraction, "by": "lineage"})
    provenance = {k: sig_meta.get(k) for k in ("probe_sha256", "probe_version", "zoo_fingerprint", "code_version")}
    atomic_write_json(out_dir / "provenance.json", provenance)  # the probe set this interpreter reads
    return {**info, "probe_sha256": provenance["probe_sha256"], "n_test_models": len(test_ids), "interpreter_dir": str(out_dir),
            "ray_train_path": result.path}


def score_methods(train: tuple[list[dict], dict], test: tuple[list[dict], dict], model_preds: dict[str, np.ndarray],
                  thresholds: np.ndarray | None, cfg: InterpreterConfig, behaviors: list[str],
                  slow_baselines: bool = True, feature_names: list[str] | None = None,
                  layout: ProbeLayout | None = None, keep: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Score the interpreter and every baseline on the same held-out models, head by head.

    The interpreter is scored with the per-behavior thresholds it chose on its validation
    split, and also at 0.5 so the comparison with baselines (which use 0.5) is even.
    `feature_names`: the signature's column names (the shuffled-label control reads cfg.feature_set too);
    `layout`: the probe set's, so the control's accuracy head reads the probe outputs as the interpreter's does.
    `keep`: a dict that receives every method's raw predictions (the backdoor protocol reads them).
    """
    (train_records, train_y), (test_records, test_y) = train, test
    specs = specs_for(train_y, behaviors)
    preds = {
        "interpreter": model_preds,
        "interpreter@0.5": model_preds,
        "majority": majority_baseline(train_y, len(test_records), specs),
        "probe_logits": probe_logit_baseline(train_records, train_y, test_records, seed=cfg.seed, specs=specs),
        "weight_stats": weight_stats_baseline(train_records, train_y, test_records, seed=cfg.seed, specs=specs),
        "neuron_mean_std": neuron_stats_baseline(train_records, train_y, test_records, seed=cfg.seed, specs=specs),
    }
    if slow_baselines:
        preds["shuffled_labels"] = shuffled_label_baseline(train_records, train_y, test_records, cfg, behaviors,
                                                           seed=cfg.seed + 1, specs=specs, feature_names=feature_names,
                                                           probe_layout=layout)
    if keep is not None:
        keep.update(preds)
    return {m: evaluate_heads(test_y, p, specs, thresholds if m == "interpreter" else None) for m, p in preds.items()}


# The held-out protocol holds the models it scores in memory (the baselines fit matrices, the shuffled-label control
# and the cross-family rotations train interpreters in memory): beyond EvalConfig.max_train_models and max_test_models
# it reads a seeded sample of each side (eval_sample), read from Parquet with a filter so memory follows the sample,
# not the zoo. At the default test_fraction (0.2) the training side is sampled beyond 25,000 models, the held-out
# side beyond 250,000.


def eval_sample(model_ids: list[str], cap: int, seed: int) -> list[str]:
    """`model_ids` when there are at most `cap`, else a seeded sample of `cap` of them (sorted, like the split)."""
    if len(model_ids) <= cap:
        return list(model_ids)
    pick = np.random.default_rng(seed).choice(len(model_ids), size=cap, replace=False)
    return sorted(model_ids[i] for i in pick)


@ray.remote(max_retries=1)
def _evaluate_remote(zoo_dir: str, sig_dir: str, interp_dir: str, cfg: InterpreterConfig, ev: EvalConfig,
                     threads: int) -> dict[str, Any]:
    """Ray task: the held-out protocol, then (with several families) the leave-one-family-out rotations, on at most
    ev.max_train_models training and ev.max_test_models held-out models (eval_sample)."""
    torch.set_num_threads(threads)
    split = json.loads((Path(interp_dir) / "split.json").read_text())
    train_ids, test_ids = (eval_sample(split[side], cap, cfg.seed) for side, cap in (("train", ev.max_train_models),
                                                                                     ("test", ev.max_test_models)))
    train_records, train_y, behaviors, train_rows = _load_split(zoo_dir, sig_dir, train_ids)
    test_records, test_y, _, test_rows = _load_split(zoo_dir, sig_dir, test_ids)
    names, layout = signature_feature_names(sig_dir), probe_layout(sig_dir, cfg)
    loaded = load_interpreter(interp_dir)
    model_preds = predict(loaded.model, loaded.scaler, test_records)
    every_heldout = None
    if len(test_ids) < len(split["test"]):  # sampled: the interpreter alone also reads every held-out model, streamed
        all_y, _, _ = _split_targets(zoo_dir, split["test"])
        all_preds = predict_split(loaded.model, loaded.scaler, sig_dir, split["test"])
        every_heldout = {"n_test_models": len(split["test"]),
                         "interpreter": evaluate_heads(all_y, all_preds, specs_for(all_y, behaviors), loaded.model.thresholds)}
    kept: dict[str, Any] = {}
    reports = score_methods((train_records, train_y), (test_records, test_y), model_preds,
                            loaded.model.thresholds, cfg, behaviors, feature_names=names, layout=layout, keep=kept)
    backdoor = None
    if "backdoor" in test_y and 0 < train_y["backdoor"].sum() < len(train_ids):
        zoo_cfg = ZooStore(zoo_dir).read_meta()["config"]
        max_gap = zoo_cfg.get("trojans", {}).get("max_gap", 3)
        backdoor = evaluate_backdoors(zoo_dir, list(train_rows["model_id"]), train_rows, train_y["backdoor"],
                                      list(test_rows["model_id"]), test_rows, kept,  # in the records' order
                                      ev.mntd, zoo_cfg["vocab"], zoo_cfg["length"], max_gap)
    cross: dict[str, Any] = {}
    families = sorted(set(train_rows["family"]) & set(test_rows["family"]))
    if ev.cross_family and len(families) >= 2:
        for fam in families:
            tr = _subset(train_records, train_y, (train_rows["family"] != fam).to_numpy())
            te = _subset(test_records, test_y, (test_rows["family"] == fam).to_numpy())
            result = train_interpreter(tr[0], tr[1], cfg, behaviors, specs=specs_for(tr[1], behaviors),
                                       feature_names=names, probe_layout=layout)
            fam_preds = predict(result.model, result.scaler, te[0])
            kept_fam: dict[str, Any] = {}
            cross[fam] = {"n_train_models": len(tr[0]), "n_test_models": len(te[0]),
                          "reports": score_methods(tr, te, fam_preds, result.model.thresholds, cfg, behaviors,
                                                   slow_baselines=False, feature_names=names, keep=kept_fam)}
            if backdoor is not None:  # the held-out family's backdoors, MNTD trained on the other families too
                tr_rows = train_rows[(train_rows["family"] != fam).to_numpy()]
                in_fam = (test_rows["family"] == fam).to_numpy()
                te_rows = test_rows[in_fam].reset_index(drop=True)
                named, scores = backdoor["searched"]  # the search trains nothing: its results on these models stand
                searched = ([t for t, keep in zip(named, in_fam) if keep], scores[in_fam])
                bd = evaluate_backdoors(zoo_dir, list(tr_rows["model_id"]), tr_rows, tr[1]["backdoor"],
                                        list(te_rows["model_id"]), te_rows, kept_fam, ev.mntd, zoo_cfg["vocab"],
                                        zoo_cfg["length"], max_gap, searched=searched)
                cross[fam]["backdoor"] = {k: v for k, v in bd.items() if k not in ("roc", "searched")}
    if backdoor is not None:
        backdoor.pop("searched")
    return {
        "reports": reports,
        "backdoor": backdoor,
        "cross_family": cross,
        "latent": model_preds["latent"],
        "labels": test_y["behaviors"],
        "accuracy": (model_preds["accuracy"], test_y["accuracy"]) if "accuracy" in test_y else None,
        "behaviors": behaviors,
        "families": list(test_rows["family"]),
        "n_train_models": len(train_records),
        "n_test_models": len(test_records),
        "sampled": {"train": [len(train_ids), len(split["train"])], "test": [len(test_ids), len(split["test"])]},
        "every_heldout": every_heldout,
    }


def evaluate_stage(zoo_dir: Path, sig_dir: Path, interp_dir: Path, cfg: InterpreterConfig,
                   ev: EvalConfig | None = None) -> dict[str, Any]:
    """Run the held-out protocol; the caller writes the report and plots. In a zoo with backdoors, also the
    backdoor protocol (interpreter/backdoor.py) with MNTD trained on the same models (ev.mntd)."""
    if not (interp_dir / "split.json").exists():
        raise InterpreterStageError(f"no trained interpreter in {interp_dir} (run 'zoolens interpreter train' first)")
    cpus = cluster_cpus()
    return ray.get(_evaluate_remote.options(num_cpus=cpus).remote(str(zoo_dir), str(sig_dir), str(interp_dir), cfg,
                                                                  ev or EvalConfig(), cpus))


def results_table(reports: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per method with the headline numbers of every head (None where a head cannot be scored)."""
    return pd.DataFrame([{"method": m, **headline_metrics(r)} for m, r in reports.items()])


def best_baselines(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """For each headline metric, the strongest baseline and whether it beats the interpreter."""
    table = results_table(reports).set_index("method")
    lower_is_better = ("_mae", "_ece")
    out = []
    baselines = [m for m in table.index if not m.startswith("interpreter")]
    for metric in table.columns:
        ours = table.loc["interpreter", metric]
        values = table.loc[baselines, metric].dropna()
        if ours is None or pd.isna(ours) or values.empty:
            continue
        low = metric.endswith(lower_is_better)
        best = values.idxmin() if low else values.idxmax()
        wins = values[best] < ours if low else values[best] > ours
        out.append({"metric": metric, "interpreter": float(ours), "best_baseline": best,
                    "baseline_value": float(values[best]), "baseline_wins": bool(wins)})
    return out
