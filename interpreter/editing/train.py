"""Train what the edits need from the interpreter's training models: the editor, the one-pass editor and the steering
baseline's decoder."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from interpreter.editing.baselines import steering_vectors, train_reconstruction
from interpreter.editing.config import EditConfig
from interpreter.editing.context import EditContext, EditError, edit_groups, family_ids, make_pool, train_bank
from interpreter.editing.decoder import NeuronAlignedDecoder, decodable
from interpreter.editing.editor import Editor, Pool, load_editor, save_editor, train_editor, typical_profile
from interpreter.editing.onepass import OnePassEditor, save_onepass, train_onepass
from zoo.store import atomic_write_json
from zoo.version import code_version

STEERING_FILE = "steering.safetensors"


def train_stage(ctx: EditContext, cfg: EditConfig, out_dir: Path,
                on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train the editor and the steering baseline's decoder on the interpreter's training models; save both.

    The typical profile (for naming a corrupted behavior) comes from every family's clean models; the decoders
    train on the MLP models only (none: they stay untrained and no edit uses them); the one-pass editor
    (:mod:`interpreter.editing.onepass`) on every family's.
    """
    t0 = time.perf_counter()
    bank = train_bank(ctx, cfg)
    pools = [make_pool(ctx, g, bank) for g in edit_groups(ctx, family_ids(ctx, ctx.train_ids, cfg.families))]
    mcfg = ctx.interp.model.cfg
    editor = Editor(cfg.editor, ctx.names, mcfg.d_model, mcfg.latent_dim, ctx.vocab)
    clean = [(p.enc.profile[i], p.behaviors[i]) for p in pools for i, c in enumerate(p.corrupted) if c is None]
    editor.typical_profile = typical_profile(torch.stack([f for f, _ in clean]), [b for _, b in clean], ctx.names)
    mlp_pools = [p for p in pools if decodable(p.spec)]
    history = train_editor(editor, mlp_pools, bank, on_step)
    t1 = time.perf_counter()
    onepass = OnePassEditor(cfg.onepass, ctx.names, mcfg.d_model, mcfg.latent_dim)
    onepass_history = train_onepass(onepass, pools, bank)
    onepass_seconds = time.perf_counter() - t1
    rec = train_reconstruction(mlp_pools, mcfg.d_model, mcfg.latent_dim, cfg.editor.d_hidden, cfg.editor.rank, ctx.vocab,
                               cfg.reconstruction_steps, cfg.editor.batch_models, cfg.seed)
    latent = torch.cat([p.enc.latent for p in pools])
    has = torch.tensor([[b in s for b in ctx.names] for p in pools for s in p.behaviors])
    tail = history[-min(100, len(history)):]
    summary = {"seconds": time.perf_counter() - t0, "n_train_models": int(sum(len(p.behaviors) for p in pools)),
               "n_decoder_train_models": int(sum(len(p.behaviors) for p in mlp_pools)),
               "final_loss": _mean(h["loss"] for h in tail), "final_acc": _mean(h["acc"] for h in tail),
               "final_change": _mean(h["change"] for h in tail),
               "onepass": _onepass_summary(onepass_history, onepass_seconds),
               "corrupted_named_right": _corrupted_named_right(pools, ctx.names, editor.typical_profile),
               "interpreter_version": ctx.interpreter_version(),
               "code_version": code_version()}
    tmp = out_dir.parent / f".{out_dir.name}.tmp"  # written whole, then renamed into place
    shutil.rmtree(tmp, ignore_errors=True)
    save_editor(editor, tmp, extra={"summary": summary})
    save_onepass(onepass, tmp, extra={"summary": summary["onepass"]})
    steering = {"steering": steering_vectors(latent, has).contiguous(),
                **{f"rec.{k}": v.detach().contiguous() for k, v in rec.state_dict().items()}}
    save_file(steering, str(tmp / STEERING_FILE))
    atomic_write_json(tmp / "history.json", history)
    atomic_write_json(tmp / "onepass_history.json", onepass_history)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return summary


def load_stage(ctx: EditContext, out_dir: Path, cfg: EditConfig) -> tuple[Editor, NeuronAlignedDecoder, torch.Tensor]:
    """The trained editor, the steering decoder and the steering vectors [K, latent_dim]."""
    if not (out_dir / "editor.json").exists():
        raise EditError(f"no trained editor in {out_dir} (run 'zoolens edit train' first)")
    editor, _ = load_editor(out_dir)
    tensors = load_file(str(out_dir / STEERING_FILE))
    mcfg = ctx.interp.model.cfg
    rec = NeuronAlignedDecoder(mcfg.d_model, mcfg.latent_dim, ctx.vocab, cfg.editor.d_hidden, cfg.editor.rank, zero_init=False)
    rec.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("rec.")})
    return editor, rec.eval(), tensors["steering"]


def _mean(values: Any) -> float:
    """Mean of the values, NaN for none (a decoder with no MLP models to train on has no history)."""
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def _onepass_summary(history: list[dict[str, float]], seconds: float) -> dict[str, float]:
    """The one-pass editor's training: seconds, and loss, agreement with the edit targets (all rows and B's positives)
    and relative change over its first and last 100 steps."""
    head, tail = history[: min(100, len(history))], history[-min(100, len(history)):]
    out = {"seconds": seconds, "steps": len(history)}
    for key in ("loss", "acc", "acc_b", "change"):
        out[f"first_{key}"] = _mean(h[key] for h in head if not np.isnan(h[key]))
        out[f"final_{key}"] = _mean(h[key] for h in tail if not np.isnan(h[key]))
    return out


def _corrupted_named_right(pools: list[Pool], names: list[str], typical: torch.Tensor) -> float:
    """Share of the training repair pairs' corrupted models whose corrupted behavior the reading names."""
    hits = [names[g] == c for p in pools for g, c in zip(p.enc.corrupted_behavior(typical).tolist(), p.corrupted)
            if c is not None]
    return float(np.mean(hits)) if hits else float("nan")
