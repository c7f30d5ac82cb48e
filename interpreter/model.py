"""Interpreter = signature encoder + named prediction heads; safetensors/json persistence."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from interpreter.batch import FeatureScaler, NeuronBatch
from interpreter.config import InterpreterConfig
from interpreter.encoder import SignatureEncoder
from interpreter.probe_accuracy import ProbeAccuracy, ProbeLayout
from interpreter.probe_profile import ProbeProfile
from interpreter.targets import HeadSpec, behaviors_spec, output_key

FORMAT_VERSION = 2  # 2: head specs + behavior thresholds; version-1 files load as behaviors-only
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "interpreter.json"


def mlp_head(d_in: int, d_out: int) -> nn.Module:
    """Small MLP read-out from the model latent."""
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_in), nn.GELU(), nn.Linear(d_in, d_out))


class Interpreter(nn.Module):
    """Reads a model signature and predicts behaviors (and, when given specs, accuracy, hyperparameters, corruption).

    One MLP head per HeadSpec on the pooled latent, in a ModuleDict keyed by output key:
    "behavior_logits" [B,K], "accuracy" [B] (sigmoid, in [0,1]), "<name>_logits" [B,C] for class heads,
    "<name>_logit" [B] for binary heads. `thresholds` [K] are the behaviors' decision thresholds
    (0.5 until training tunes them); they travel with the model through save/load.

    With a probe layout and cfg.probe_accuracy the accuracy head is :class:`ProbeAccuracy`'s estimate, the
    model's own probe outputs scored under the behaviors the interpreter reads, plus the MLP head's learned
    correction in log-odds (zero at start).

    With a probe layout and cfg.probe_profile the behavior logits add :class:`ProbeProfile`'s reading of each
    behavior's own probe outputs, which training fits first and then freezes (the latent head's correction starts
    at zero). The accuracy estimate then scores under the profile's reading alone, with its set sharpness fixed at
    its start (3): on zoo3 that ranked accuracy at 0.905 / 0.907 / 0.904 (seeds 0 / 1 / 2) against 0.892 / 0.910 /
    0.887 under the full behavior logits, whose latent correction varies more from seed to seed; learned, the
    sharpness fell to 1.4 (hedging the accuracy MSE on misread sets) and tau to 0.892 / 0.898.
    """

    def __init__(self, cfg: InterpreterConfig, n_features: int, n_behaviors: int, specs: Sequence[HeadSpec] | None = None,
                 n_probes: int = 0, probe_skip: bool = True, probe_layout: ProbeLayout | bool | None = None) -> None:
        super().__init__()
        specs = list(specs) if specs is not None else [behaviors_spec([f"b{k}" for k in range(n_behaviors)])]
        by_name = {s.name: s for s in specs}
        if "behaviors" not in by_name or by_name["behaviors"].n_out != n_behaviors:
            raise ValueError(f"specs must include a 'behaviors' head with {n_behaviors} outputs")
        self.cfg = cfg
        self.n_features = n_features
        self.n_behaviors = n_behaviors
        self.n_probes = n_probes
        self.specs = specs
        self.thresholds = np.full(n_behaviors, 0.5, dtype=np.float32)
        self.encoder = SignatureEncoder(cfg, n_features, n_probes)
        self.heads = nn.ModuleDict({output_key(s): mlp_head(cfg.latent_dim, s.n_out) for s in specs})
        # a linear path from the probe logits straight to the behavior logits (zero at start): the encoder then
        # only has to add to what a linear probe of the output already reads
        self.probe_skip = nn.Linear(n_probes, n_behaviors) if n_probes and probe_skip else None
        if self.probe_skip is not None:
            nn.init.zeros_(self.probe_skip.weight)
            nn.init.zeros_(self.probe_skip.bias)
        # probe_layout=True: the layout comes with load_state_dict (a saved interpreter)
        layout = probe_layout if isinstance(probe_layout, ProbeLayout) else None
        self.probe_profile = None
        if probe_layout and n_probes and cfg.probe_profile:
            # the behavior logits start as the profile's reading; the latent head learns a correction (zero at start)
            self.probe_profile = ProbeProfile(n_probes, n_behaviors, layout)
            last = self.heads[output_key(by_name["behaviors"])][-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.probe_accuracy = None
        if probe_layout and n_probes and cfg.probe_accuracy and "accuracy" in by_name:
            self.probe_accuracy = ProbeAccuracy(n_probes, n_behaviors, layout)
            if self.probe_profile is not None:  # its reading is already a fitted probability: keep the set sharpness
                self.probe_accuracy.log_sharpness.requires_grad_(False)
            last = self.heads[output_key(by_name["accuracy"])][-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, batch: NeuronBatch) -> dict[str, torch.Tensor]:
        """Return latent [B,latent_dim], neuron_latents [B,N,d_model] and one entry per head (see the class doc)."""
        neuron_latents, latent = self.encoder(batch)
        out = {"latent": latent, "neuron_latents": neuron_latents}
        profile = None if self.probe_profile is None else self.probe_profile(batch.probe_raw)
        for spec in sorted(self.specs, key=lambda s: s.name != "behaviors"):  # the accuracy estimate reads behaviors
            key = output_key(spec)
            y = self.heads[key](latent)
            if spec.name == "behaviors" and self.probe_skip is not None:
                y = y + self.probe_skip(batch.probe_logits)
            if spec.name == "behaviors" and profile is not None:
                y = y + profile
            if spec.kind in ("regression", "binary"):
                y = y.squeeze(-1)
            if spec.name == "accuracy" and self.probe_accuracy is not None:
                read = out["behavior_logits"] if profile is None else profile  # see the class doc
                estimate = self.probe_accuracy(batch.probe_raw, read).clamp(1e-4, 1 - 1e-4)
                y = y + torch.logit(estimate)
            out[key] = torch.sigmoid(y) if spec.kind == "regression" else y
        return out


class LoadedInterpreter(NamedTuple):
    """What `load_interpreter` returns: everything needed to score new signatures."""

    model: Interpreter
    scaler: FeatureScaler
    behavior_names: list[str]


def save_interpreter(model: Interpreter, scaler: FeatureScaler, behavior_names: Sequence[str], directory: str | Path) -> Path:
    """Write weights.safetensors + interpreter.json (config, sizes, names, head specs, thresholds, scaler) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if len(behavior_names) != model.n_behaviors:
        raise ValueError(f"{len(behavior_names)} behavior names for a model with {model.n_behaviors} outputs")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    meta = {
        "format_version": FORMAT_VERSION,
        "config": model.cfg.model_dump(),
        "n_features": model.n_features,
        "n_behaviors": model.n_behaviors,
        "n_probes": model.n_probes,
        "probe_skip": model.probe_skip is not None,
        "probe_accuracy": model.probe_accuracy is not None,
        "probe_profile": model.probe_profile is not None,
        "behavior_names": list(behavior_names),
        "heads": [spec.to_dict() for spec in model.specs],
        "thresholds": [float(t) for t in model.thresholds],
        "scaler": scaler.state_dict(),
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def load_interpreter(directory: str | Path, device: torch.device | str = "cpu") -> LoadedInterpreter:
    """Rebuild an Interpreter saved by `save_interpreter` (safetensors only, no pickle), in eval mode.

    Version-1 files (before heads existed) load as a behaviors-only model with 0.5 thresholds.
    """
    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    if meta.get("format_version") not in (1, FORMAT_VERSION):
        raise ValueError(f"unsupported interpreter format {meta.get('format_version')}")
    cfg = InterpreterConfig(**meta["config"])
    names = list(meta["behavior_names"])
    specs = [HeadSpec.from_dict(d) for d in meta["heads"]] if "heads" in meta else [behaviors_spec(names)]
    model = Interpreter(cfg, meta["n_features"], meta["n_behaviors"], specs, n_probes=meta.get("n_probes", 0),
                        probe_skip=meta.get("probe_skip", False),  # files from before the skip path have none
                        probe_layout=meta.get("probe_accuracy", False) or meta.get("probe_profile", False))
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device="cpu"))
    if "thresholds" in meta:
        model.thresholds = np.asarray(meta["thresholds"], dtype=np.float32)
    model.to(device).eval()
    return LoadedInterpreter(model, FeatureScaler.from_state_dict(meta["scaler"]), names)
