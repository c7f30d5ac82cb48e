"""Interpreter = signature encoder + named prediction heads; safetensors/json persistence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from interpreter.batch import FeatureScaler, NeuronBatch
from interpreter.config import InterpreterConfig
from interpreter.encoder import SignatureEncoder

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "interpreter.json"


def mlp_head(d_in: int, d_out: int) -> nn.Module:
    """Small MLP read-out from the model latent."""
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_in), nn.GELU(), nn.Linear(d_in, d_out))


class Interpreter(nn.Module):
    """Reads a model signature and predicts its behaviors; heads live in a ModuleDict keyed by output name."""

    def __init__(self, cfg: InterpreterConfig, n_features: int, n_behaviors: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_features = n_features
        self.n_behaviors = n_behaviors
        self.encoder = SignatureEncoder(cfg, n_features)
        # later heads (e.g. "accuracy", "hyperparams") are added here under their output key
        self.heads = nn.ModuleDict({"behavior_logits": mlp_head(cfg.latent_dim, n_behaviors)})

    def forward(self, batch: NeuronBatch) -> dict[str, torch.Tensor]:
        """Return latent [B,latent_dim], neuron_latents [B,N,d_model] and one entry per head (behavior_logits [B,K])."""
        neuron_latents, latent = self.encoder(batch)
        out = {"latent": latent, "neuron_latents": neuron_latents}
        for name, head in self.heads.items():
            out[name] = head(latent)
        return out


class LoadedInterpreter(NamedTuple):
    """What `load_interpreter` returns: everything needed to score new signatures."""

    model: Interpreter
    scaler: FeatureScaler
    behavior_names: list[str]


def save_interpreter(model: Interpreter, scaler: FeatureScaler, behavior_names: Sequence[str], directory: str | Path) -> Path:
    """Write weights.safetensors + interpreter.json (config, sizes, names, scaler) into `directory`."""
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
        "behavior_names": list(behavior_names),
        "scaler": scaler.state_dict(),
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def load_interpreter(directory: str | Path, device: torch.device | str = "cpu") -> LoadedInterpreter:
    """Rebuild an Interpreter saved by `save_interpreter` (safetensors only, no pickle), in eval mode."""
    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported interpreter format {meta.get('format_version')}")
    cfg = InterpreterConfig(**meta["config"])
    model = Interpreter(cfg, meta["n_features"], meta["n_behaviors"])
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device="cpu"))
    model.to(device).eval()
    return LoadedInterpreter(model, FeatureScaler.from_state_dict(meta["scaler"]), list(meta["behavior_names"]))
