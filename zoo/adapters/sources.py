"""Where a model to read comes from: a zoo model id, a Python class plus safetensors weights, or a TransformerLens
``HookedTransformer`` config plus safetensors weights. Weights are only ever read as safetensors (never a pickle),
and nothing is downloaded.

- ``path/to/model.py:ClassName`` + ``weights.safetensors`` + constructor arguments (a YAML file or inline YAML
  mapping; optional ``vocab``/``length`` keys there are checked against the probe set, not passed on);
- ``hooked_transformer`` + a config (YAML/JSON file or mapping of ``HookedTransformerConfig`` fields) + weights;
- a model id of a zoo (``ZOO`` directory), read through its family's own forward.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from zoo.adapters.subject import AdapterError, FamilySubject, ModuleSubject
from zoo.store import ZooStore

RESERVED_ARGS = ("vocab", "length")  # read by zoolens from the argument YAML, not passed to the class


def read_mapping(args: str | Path | Mapping[str, Any] | None, what: str = "constructor arguments") -> dict[str, Any]:
    """A YAML mapping from a file path, an inline YAML string, or a dict (None: empty); AdapterError otherwise."""
    if args is None:
        return {}
    if isinstance(args, Mapping):
        return dict(args)
    text = str(args)
    path = Path(text).expanduser()
    try:
        if path.suffix in (".yaml", ".yml", ".json") or path.is_file():
            if not path.is_file():
                raise AdapterError(f"{what}: file not found: {path}")
            text = path.read_text()
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise AdapterError(f"{what}: not valid YAML: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise AdapterError(f"{what}: cannot read {path}: {e.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AdapterError(f"{what}: expected a mapping of names to values, got {type(data).__name__}")
    return data


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors state dict (never unpickled); AdapterError for a missing or non-safetensors file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AdapterError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{path} is not a safetensors file ({str(e).splitlines()[0]}); "
                           "save weights with safetensors.torch.save_file") from None


def import_class(ref: str) -> type[torch.nn.Module]:
    """``path/to/model.py:ClassName`` -> the class (the file is imported as a module); AdapterError otherwise."""
    if ":" not in ref:
        raise AdapterError(f"model class {ref!r}: expected path/to/model.py:ClassName")
    file, cls_name = ref.rsplit(":", 1)
    path = Path(file).expanduser()
    if not path.is_file():
        raise AdapterError(f"model class {ref!r}: file not found: {path}")
    name = f"zoolens_user_model_{abs(hash(str(path.resolve())))}"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of user code at import is one line
        sys.modules.pop(name, None)
        raise AdapterError(f"model class {ref!r}: cannot import {path}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
    cls = getattr(module, cls_name, None)
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise AdapterError(f"model class {ref!r}: {path} defines no torch.nn.Module subclass named {cls_name!r}")
    return cls


def load_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load a state dict strictly; missing, unexpected or mis-shaped tensors are one AdapterError line."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        if shapes:
            k = shapes[0]
            parts.append(f"{k} has shape {list(state[k].shape)}, the class expects {list(own[k].shape)}")
        raise AdapterError(f"the weights do not match {what}: {'; '.join(parts)}")
    module.load_state_dict(dict(state), strict=True)


def from_class_file(ref: str, weights: str | Path, args: str | Path | Mapping[str, Any] | None = None,
                    hook_modules: Sequence[str] | None = None, name: str | None = None) -> ModuleSubject:
    """A user's own ``nn.Module`` class built with its constructor arguments and loaded from safetensors."""
    cls = import_class(ref)
    kwargs = read_mapping(args)
    vocab, length = kwargs.pop("vocab", None), kwargs.pop("length", None)
    try:
        module = cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - a constructor rejecting its arguments is user input
        raise AdapterError(f"cannot build {cls.__name__}(**{kwargs}): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    load_state(module, load_weights(weights), cls.__name__)
    return ModuleSubject(module, name=name or Path(weights).stem, vocab=vocab, length=length, hook_modules=hook_modules,
                         source={"source": "class", "class_ref": ref, "weights": str(weights)})


def hooked_transformer(config: str | Path | Mapping[str, Any]) -> torch.nn.Module:
    """A TransformerLens ``HookedTransformer`` from a config mapping (no weights loaded, nothing downloaded)."""
    cfg = read_mapping(config, "HookedTransformer config")
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as e:
        raise AdapterError(f"reading a HookedTransformer needs transformer-lens<4 ({e})") from None
    try:
        with warnings.catch_warnings():  # 3.x warns that 4.0 drops the class; zoolens pins <4
            warnings.simplefilter("ignore", DeprecationWarning)
            return HookedTransformer(HookedTransformerConfig(**cfg))
    except Exception as e:  # noqa: BLE001 - a bad config is user input
        raise AdapterError(f"HookedTransformer config: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def from_hooked_transformer(config: str | Path | Mapping[str, Any], weights: str | Path,
                            hook_modules: Sequence[str] | None = None, name: str | None = None) -> ModuleSubject:
    """A HookedTransformer from its config plus safetensors weights, read through its own hook names."""
    model = hooked_transformer(config)
    load_state(model, load_weights(weights), "the HookedTransformer config")
    subject = ModuleSubject(model, name=name or Path(weights).stem, vocab=model.cfg.d_vocab, hook_modules=hook_modules,
                            source={"source": "hooked_transformer", "weights": str(weights)})
    subject.max_length = model.cfg.n_ctx  # any length up to its context
    return subject


def from_zoo(zoo: str | Path, model_id: str) -> FamilySubject:
    """One model of a zoo, read through its family's forward."""
    store = ZooStore(zoo)
    manifest = store.read_manifest(columns=["model_id", "cohort_id"] if "cohort_id" in store.manifest_columns() else None)
    hit = manifest[manifest["model_id"] == model_id]
    if hit.empty:
        raise AdapterError(f"model {model_id!r} is not in the zoo at {store.uri}")
    cohort = str(hit.iloc[0]["cohort_id"]) if "cohort_id" in hit.columns else None
    for cid in [cohort] if cohort else store.finished_cohorts():
        spec, params, rows = store.load_cohort(cid)
        ids = list(rows["model_id"])
        if model_id in ids:
            m = ids.index(model_id)
            return FamilySubject(spec, {k: v[m:m + 1] for k, v in params.items()}, name=model_id)
    raise AdapterError(f"model {model_id!r} is not in the zoo at {store.uri}")
