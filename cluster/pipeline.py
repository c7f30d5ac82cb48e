"""The main job: zoo -> signatures -> interpreter -> evaluation, one MLflow child run per stage.

Each stage can also run alone (``zoolens zoo build`` ...); every stage writes its
summary to ``RUN_DIR/stages/<stage>.json`` and ``report.json`` is rebuilt from
those, so the report always holds the config and code version that made it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from zoo.errors import ConfigError
from zoo.foreign.store import ForeignStore, is_foreign_zoo
from zoo.store import ZooStore, atomic_write_json, resolve_location
from zoo.version import code_version

from interpreter.editing.apply import edit_model
from interpreter.adapter_editing import edit_foreign_model
from interpreter.editing.context import EditError, open_context, refuse_edit
from interpreter.editing.tradeoff import tradeoff_figure
from interpreter.editing.summary import latent_summary

from cluster.tracking import plots
from cluster.config import PipelineConfig, load_config
from cluster.stages.edit import run_edit_task
from cluster.stages.interpreter import best_baselines, evaluate_stage, results_table, train_stage
from cluster.tracking.registry import register_interpreter
from cluster.runtime import init_ray
from cluster.stages.foreign import check_foreign_fit, extract_foreign_signatures
from cluster.stages.signatures import extract_signatures, probe_set_for
from cluster.tracking.runs import (
    check_tracking_uri,
    log_dataframe_input,
    log_headline,
    make_run_dir,
    resolve_tracking_uri,
    setup_tracking,
    stage_run,
    start_run,
)
from cluster.stages.zoo import build_zoo

STAGES = ("zoo", "signatures", "interpreter_train", "interpreter_evaluate", "edit_train", "edit_evaluate")


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def zoo(self) -> Path:
        return self.root / "zoo"

    @property
    def signatures(self) -> Path:
        return self.root / "signatures"

    @property
    def interpreter(self) -> Path:
        return self.root / "interpreter"

    @property
    def editor(self) -> Path:
        return self.root / "editor"

    @property
    def edited(self) -> Path:
        """A zoo store of edited models, each with its lineage."""
        return self.root / "edited"

    @property
    def foreign_edits(self) -> Path:
        """A foreign store of edited foreign models (``zoolens edit MODEL --zoo FOREIGN``)."""
        return self.root / "edits"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    def stage_file(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"


class Pipeline:
    """Holds the config, paths and tracking URI; each method is one stage."""

    def __init__(self, cfg: PipelineConfig, tracking_uri: str | None = None, zoo_dir: Path | str | None = None,
                 progress: bool = True):
        self.cfg = cfg
        self.paths = RunPaths(cfg.run_dir)
        self.zoo_dir = resolve_location(zoo_dir) if zoo_dir else self.paths.zoo  # a directory or a storage URI
        self.foreign = is_foreign_zoo(self.zoo_dir)  # a zoo of `zoolens zoo foreign`: signatures and edits only
        self.tracking_uri = resolve_tracking_uri(tracking_uri, cfg.tracking.tracking_uri, self.paths.root)
        self.progress = progress
        self._zoo_verified = False  # every shard checked against its hashes (before signatures are made or reused)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Pipeline:
        """The pipeline a command line names: CONFIG, its ``key.path=value`` overrides, --output-dir, --zoo,
        --tracking-uri and --no-progress."""
        cfg = load_config(args.config, getattr(args, "overrides", None) or ())
        if args.output_dir:
            cfg = cfg.model_copy(update={"output_dir": args.output_dir})
        return cls(cfg, tracking_uri=args.tracking_uri, zoo_dir=getattr(args, "zoo", None), progress=not args.no_progress)

    @contextlib.contextmanager
    def session(self, run_name: str, ray: bool = True) -> Iterator[mlflow.ActiveRun]:
        """Create the tracking store and experiment, start Ray (unless ``ray`` is False: a stage that needs it
        later starts it then), and open the parent run."""
        check_tracking_uri(self.tracking_uri)
        make_run_dir(self.paths.root)
        setup_tracking(self.tracking_uri, self.cfg.tracking.experiment, self.paths.root / "mlartifacts")
        if ray:
            init_ray(self.cfg.ray)
        with start_run(run_name=run_name, tags={"zoolens.code_version": code_version(),
                                                "zoolens.config": self.cfg.name}) as run:
            mlflow.log_dict(self.cfg.model_dump(mode="json"), "config.json")
            yield run

    # -- checks before anything is written -----------------------------------------
    def preflight(self, stage: str) -> None:
        """Refuse a stage whose inputs are missing or corrupted before any run, directory or Ray instance is made."""
        from cluster.stages.signatures import read_signature_meta
        from cluster.stages.zoo import check_store

        if self.foreign:
            self._preflight_foreign(stage)
            return
        if stage == "zoo":
            check_store(self.cfg.zoo, self.zoo_dir)
            return
        store = ZooStore(self.zoo_dir)
        store.require()
        if stage == "signatures":
            store.verify()  # a corrupted shard is named here, and old signatures of it are not reused
            self._zoo_verified = True
            return
        read_signature_meta(self.paths.signatures)
        if stage == "evaluate" and not (self.paths.interpreter / "split.json").exists():
            raise EditError(f"no trained interpreter in {self.paths.interpreter} (run 'zoolens interpreter train' first)")

    def _preflight_foreign(self, stage: str) -> None:
        """A foreign zoo is read, never built or trained on here: only its signatures are extracted, through the
        config's probe set, so its vocabulary and length must be the config's."""
        if stage != "signatures":
            raise ConfigError(f"{self.zoo_dir} is a foreign zoo ('zoolens zoo foreign'): it takes 'signatures extract', "
                              f"'read', 'edit MODEL' and 'zoo show', not the {stage} stage")
        store = ForeignStore(self.zoo_dir)
        store.read_manifest()  # no finished model is named here
        check_foreign_fit(store, self.cfg.zoo.vocab, self.cfg.zoo.length)

    def check_edit(self, model_id: str, op: str, behavior: str | None, force: bool = False) -> None:
        """Refuse an edit that names no model of the zoo, or that would do nothing (unless ``force``), before any training.

        Adding a behavior the model was trained to flag, removing one it was not, or repairing a model
        none of whose labels were corrupted changed weights a lot and raised false positives for nothing.
        """
        store = ForeignStore(self.zoo_dir) if self.foreign else ZooStore(self.zoo_dir)
        manifest = store.read_manifest().set_index("model_id")
        if model_id not in manifest.index:
            raise EditError(f"model '{model_id}' is not in the zoo at {self.zoo_dir}")
        row = manifest.loc[model_id]
        known = store.read_meta().get("config", {}).get("behaviors") or sorted(row["behaviors"])
        corrupted = isinstance(row.get("corrupted_behavior"), str) and row.get("role") == "corrupted"
        refuse_edit(model_id, op, behavior, row["behaviors"], known, corrupted=corrupted, force=force)

    # -- stages -------------------------------------------------------------------
    def zoo(self) -> dict[str, Any]:
        with stage_run("zoo", params=self.cfg.zoo.model_dump(mode="json")):
            summary = build_zoo(self.cfg.zoo, self.zoo_dir, progress=self.progress)
            store = ZooStore(self.zoo_dir)
            manifest = store.read_manifest()
            summary.update(mean_test_acc=float(manifest["test_acc"].mean()), size_bytes=store.size_bytes())
            previous = self.paths.stage_file("zoo")
            if not summary["models_trained"] and previous.exists():  # a rerun found every cohort built: keep the build's timing
                built = json.loads(previous.read_text())
                summary.update(seconds=built.get("seconds"), models_per_s=built.get("models_per_s"), resumed=True)
            logged = ("mean_test_acc", "models_trained") if summary.get("resumed") else ("models_per_s", "mean_test_acc", "models_trained")
            mlflow.log_metrics({k: summary[k] for k in logged})
            table = manifest.drop(columns=["spec", "sha256", "code_version"]).assign(behaviors=manifest["behaviors"].map(",".join))
            log_dataframe_input(table, source=str(self.zoo_dir), name="zoo", context="training")
            self._log_plot(plots.accuracy_histogram(manifest, self.paths.plots / "zoo_accuracy.png"))
            return self._finish("zoo", summary)

    def signatures(self) -> dict[str, Any]:
        sc = self.cfg.signatures
        if not self._zoo_verified and not self.foreign:  # `zoolens run`: a zoo found built may have been corrupted since
            ZooStore(self.zoo_dir).verify()
        with stage_run("signatures", params=sc.model_dump(mode="json")):
            t0 = time.perf_counter()
            if self.foreign:  # read through the adapter with this config's probe set, so its interpreter reads them
                probes = probe_set_for({"config": self.cfg.zoo.model_dump(mode="json")}, sc.probes)
                summary = extract_foreign_signatures(self.zoo_dir, self.paths.signatures, probes, self.progress)
            else:
                summary = extract_signatures(self.zoo_dir, self.paths.signatures, sc.probes, sc.num_actors, self.progress)
            summary["seconds"] = time.perf_counter() - t0
            mlflow.log_params({"probe_sha256": summary["probe_sha256"], "probe_version": summary["probe_version"],
                               "n_probes": summary["n_probes"]})
            if not summary.get("resumed"):  # a rerun that found them current did no work to time
                mlflow.log_metric("models_per_s", summary["n_models"] / summary["seconds"])
            mlflow.log_dict({"feature_names": summary["feature_names"]}, "signature_schema.json")
            ids = (ForeignStore(self.zoo_dir).read_manifest() if self.foreign else
                   ZooStore(self.zoo_dir).read_manifest(columns=["model_id"]))["model_id"]
            index = pd.DataFrame({"model_id": ids})
            log_dataframe_input(index, source=str(self.paths.signatures),
                                name=f"signatures-{summary['probe_sha256'][:12]}", context="training")
            return self._finish("signatures", summary)

    def train(self) -> dict[str, Any]:
        ic = self.cfg.interpreter
        with stage_run("interpreter_train", params=ic.model_dump(mode="json")) as run:
            summary = train_stage(self.zoo_dir, self.paths.signatures, self.paths.interpreter, ic,
                                  self.cfg.evaluation.test_fraction, self.cfg.evaluation.seed,
                                  self.tracking_uri, run.info.run_id)
            mlflow.log_metrics({"train_seconds": summary["seconds"], "best_epoch": summary["best_epoch"]})
            return self._finish("interpreter_train", summary)

    def evaluate(self) -> dict[str, Any]:
        """Score held-out models beside baselines and register; the headline numbers also go on the parent run."""
        summary = self._evaluate()
        if mlflow.active_run() is not None:  # the pipeline's parent run, where the runs list shows them
            log_headline(summary["table"])
        return summary

    def _evaluate(self) -> dict[str, Any]:
        with stage_run("interpreter_evaluate") as run:
            result = evaluate_stage(self.zoo_dir, self.paths.signatures, self.paths.interpreter, self.cfg.interpreter,
                                    self.cfg.evaluation)
            reports = result["reports"]
            table = results_table(reports)
            mlflow.log_table(table, "results_table.json")
            ours = table.set_index("method").loc["interpreter"]
            mlflow.log_metrics({k: float(v) for k, v in ours.items() if v is not None and pd.notna(v)})
            behavior_reports = {m: r["behaviors"] for m, r in reports.items() if m != "interpreter@0.5"}
            self._log_plot(plots.behavior_bars(behavior_reports, self.paths.plots / "behavior_balanced_accuracy.png"))
            self._log_plot(plots.latent_map(result["latent"], result["labels"], result["behaviors"],
                                            self.paths.plots / "latent_map.png"))
            if result["accuracy"] is not None:
                self._log_plot(plots.accuracy_scatter(*result["accuracy"], result["families"],
                                                      reports["interpreter"]["accuracy"]["kendall_tau"],
                                                      self.paths.plots / "accuracy_prediction.png"))
            cross = {fam: {"n_train_models": c["n_train_models"], "n_test_models": c["n_test_models"],
                           "table": results_table(c["reports"]).to_dict(orient="records"), "reports": c["reports"]}
                     for fam, c in result["cross_family"].items()}
            if cross:
                mlflow.log_table(pd.concat([pd.DataFrame(c["table"]).assign(held_out_family=f) for f, c in cross.items()]),
                                 "cross_family_table.json")
            score = reports["interpreter"]["behaviors"]["mean_balanced_accuracy"]
            registered = register_interpreter(self.paths.interpreter, self.cfg.tracking.registered_model, score,
                                              tags={"code_version": code_version(), "run_id": run.info.run_id,
                                                    "probe_sha256": self._probe_sha256()})
            summary = {
                "n_train_models": result["n_train_models"],
                "n_test_models": result["n_test_models"],
                "table": table.to_dict(orient="records"),
                "baseline_comparison": best_baselines(reports),
                "cross_family": cross,
                "heldout": reports,
                "registered_model": registered,
                # models scored / in the split: beyond evaluation.max_train_models and max_test_models every method is scored on a
                # seeded sample, and the interpreter alone also on every held-out model (every_heldout)
                "sampled": result["sampled"],
            }
            if result["every_heldout"] is not None:
                summary["every_heldout"] = result["every_heldout"]
            if result.get("backdoor"):  # a zoo with backdoors: detection AUROC per slice beside MNTD (interpreter/backdoor.py)
                bd = result["backdoor"]
                summary["backdoor"] = {k: v for k, v in bd.items() if k != "roc"}
                summary["backdoor"]["held_out_family"] = {fam: c["backdoor"] for fam, c in result["cross_family"].items()
                                                          if "backdoor" in c}  # trained on the other families
                mlflow.log_dict(summary["backdoor"], "backdoor.json")
                for method, prefix in (("interpreter", "backdoor_auroc"), ("trigger_search", "backdoor_search_auroc")):
                    mlflow.log_metrics({f"{prefix}_{s.replace(':', '_')}": v[method]
                                        for s, v in bd["detection"].items() if v.get(method) is not None})
                if bd["naming"]["trigger_search"].get("exact") is not None:
                    mlflow.log_metric("backdoor_trigger_named_exact", bd["naming"]["trigger_search"]["exact"])
                self._log_plot(plots.backdoor_auroc(bd["detection"], self.paths.plots / "backdoor_auroc.png"))
                if bd["roc"]:
                    self._log_plot(plots.backdoor_roc(bd["roc"], bd["detection"], self.paths.plots / "backdoor_roc.png"))
            return self._finish("interpreter_evaluate", summary)

    def edit_train(self) -> dict[str, Any]:
        ec = self.cfg.edit
        self._require_interpreter()
        with stage_run("edit_train", params=ec.model_dump(mode="json")):
            summary = self._edit_task("train", progress=self.progress)
            mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, float) and math.isfinite(v)})
            mlflow.log_metrics({f"onepass.{k}": float(v) for k, v in summary.get("onepass", {}).items()
                                if isinstance(v, (int, float)) and math.isfinite(v)})
            mlflow.log_artifacts(str(self.paths.editor), artifact_path="editor")
            return self._finish("edit_train", summary)

    def edit_evaluate(self) -> dict[str, Any]:
        """Score edits of held-out models (training the editor first if this run has none)."""
        if not (self.paths.editor / "editor.json").exists():
            self.edit_train()
        with stage_run("edit_evaluate"):
            result = self._edit_task("evaluate", progress=self.progress)
            verdicts, loc, latents = result.pop("verdicts"), result.pop("localization_table"), result.pop("latents")
            mlflow.log_table(verdicts, "edit_verdicts.json")
            if len(loc):
                mlflow.log_table(loc, "localization_table.json")
                self._log_plot(plots.localization_bars(loc, self.paths.plots / "edit_localization.png"))
            for row in result["by_op"]:
                mlflow.log_metric(f"{row['method']}.{row['op']}.success_rate", row["success_rate"])
                mlflow.log_metric(f"{row['method']}.{row['op']}.self_check_rate", row["self_check_rate"])
                mlflow.log_metric(f"{row['method']}.{row['op']}.median_change", row["median_change"])
                mlflow.log_metric(f"{row['method']}.{row['op']}.median_neurons_changed", row["median_neurons_changed"])
                if row.get("edits_per_second") is not None:
                    mlflow.log_metric(f"{row['method']}.{row['op']}.edits_per_second", row["edits_per_second"])
                if row["success_if_checked"] is not None:
                    mlflow.log_metric(f"{row['method']}.{row['op']}.success_if_checked", row["success_if_checked"])
            for method, passes in result["localization_passes"].items():
                mlflow.log_metric(f"localization_passes_{method}", passes)
            self._log_plot(plots.edit_success(result["by_op"], self.paths.plots / "edit_success.png"))
            self._log_plot(tradeoff_figure(result["by_op"], self.paths.plots / "edit_tradeoff.png",
                                           f"judged on {result['judged_on']} ({result['judged_sequences']:,} sequences)"))
            self._log_plot(plots.edit_heatmap(result["per_behavior"], result["training_ceiling"],
                                              self.paths.plots / "edit_per_behavior.png"))
            if latents:
                result["latent_moves"] = latent_summary(latents)
                for row in result["latent_moves"]:
                    mlflow.log_metric(f"{row['method']}.{row['op']}.latent_move", row["median_move"])
                    mlflow.log_metric(f"{row['method']}.{row['op']}.latent_pc_move", row["median_pc_move"])
                self._log_plot(plots.latent_edits(latents, result["latent_moves"], self.paths.plots / "edit_latents.png"))
            return self._finish("edit_evaluate", result)

    def edit_apply(self, model_id: str, op: str, behavior: str | None, method: str) -> dict[str, Any]:
        """Edit one model in this process (no Ray) into the run's ``edited`` zoo store and log the edit as its own
        MLflow run (the editor is trained first, on the cluster, if this run has none)."""
        if not (self.paths.editor / "editor.json").exists():
            self.edit_train()
        with stage_run("edit_apply", params={"model_id": model_id, "op": op, "behavior": behavior, "method": method}):
            ctx = open_context(self.zoo_dir, self.paths.interpreter, self.cfg.signatures.probes.model_dump())
            result = edit_model(ctx, self.cfg.edit, self.paths.editor, ZooStore(self.paths.edited), model_id, op,
                                behavior, method)
            mlflow.log_dict(result, "edit.json")
            return result

    def edit_foreign(self, model_id: str, op: str, behavior: str) -> dict[str, Any]:
        """Guided edit of one model of a foreign zoo in this process, into the run's ``edits`` foreign store, logged
        as its own MLflow run (no editor or interpreter: the model's assigned behaviors are kept)."""
        with stage_run("edit_apply", params={"model_id": model_id, "op": op, "behavior": behavior, "method": "guided",
                                             "foreign_zoo": str(self.zoo_dir)}):
            result = edit_foreign_model(ForeignStore(self.zoo_dir), model_id, op, behavior, self.cfg.edit,
                                        ForeignStore(self.paths.foreign_edits))
            mlflow.log_dict(result, "edit.json")
            return result

    def _edit_task(self, kind: str, **kwargs: Any) -> dict[str, Any]:
        """Run an edit stage as a Ray task (starting Ray if this session has not)."""
        init_ray(self.cfg.ray)
        return run_edit_task(kind, self.zoo_dir, self.paths.interpreter, self.paths.editor,
                             self.cfg.signatures.probes.model_dump(), self.cfg.edit, **kwargs)

    def _require_interpreter(self) -> None:
        if not (self.paths.interpreter / "split.json").exists():
            raise EditError(f"no trained interpreter in {self.paths.interpreter} (run 'zoolens interpreter train' first)")

    def run_all(self) -> Path:
        """Every stage in order (the edit stages when ``edit.enabled``); returns the report path."""
        self.zoo()
        self.signatures()
        self.train()
        self.evaluate()
        if self.cfg.edit.enabled:
            self.edit_train()
            self.edit_evaluate()
        return self.paths.report

    # -- bookkeeping --------------------------------------------------------------
    def _finish(self, stage: str, summary: dict[str, Any]) -> dict[str, Any]:
        atomic_write_json(self.paths.stage_file(stage), summary)
        self.write_report()
        return summary

    def write_report(self) -> Path:
        """report.json: config, code version, tracking location and every finished stage's summary."""
        stages = {}
        for s in STAGES:
            path = self.paths.stage_file(s)
            if path.exists():
                stages[s] = json.loads(path.read_text())
        run = mlflow.active_run()
        report = {
            "config": self.cfg.model_dump(mode="json"),
            "code_version": code_version(),
            "tracking_uri": self.tracking_uri,
            "experiment": self.cfg.tracking.experiment,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "stages": stages,
        }
        if run is not None:
            report["mlflow_run_id"] = (run.data.tags.get("mlflow.parentRunId") or run.info.run_id)
        atomic_write_json(self.paths.report, report)
        return self.paths.report

    def _probe_sha256(self) -> str:
        path = self.paths.interpreter / "provenance.json"
        if not path.exists():
            return ""
        return json.loads(path.read_text()).get("probe_sha256") or ""

    def _log_plot(self, path: Path) -> None:
        mlflow.log_artifact(str(path), artifact_path="plots")
