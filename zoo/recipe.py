"""Recipes: every command's settings come from one pydantic-validated YAML file plus ``key.path=value`` overrides.

The torchtune/CleanRL way: a recipe file holds the defaults of a run, and any field can be changed on the
command line without editing it (``zoolens run configs/demo.yaml zoo.n_models=400 interpreter.epochs=5``).
Every problem (missing or malformed file, unknown key, bad value) is one :class:`ConfigError` line naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from zoo.errors import ConfigError

R = TypeVar("R", bound=BaseModel)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``, with one-line errors; an empty file is refused (it would silently mean "all defaults")."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config is a directory, not a YAML file: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not a text file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"malformed YAML in {path}{where}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raise ConfigError(f"config {path} is empty (write at least one setting, e.g. name: or output_dir:)")
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping, got {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value), the value read as YAML (``3``, ``true``, ``[1, 2]``, ``null``)."""
    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    if not sep or not key.strip() or any(not p for p in path):
        raise ConfigError(f"override '{text}' is not of the form key.path=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {key}: value '{value}' is not valid YAML") from None
    return path, parsed


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str], cls: type[BaseModel] | None = None) -> dict[str, Any]:
    """A copy of ``raw`` with every ``key.path=value`` set; with ``cls``, keys the recipe does not define are refused.

    Only fields are checked here (values are checked when the recipe is validated), so the error names the key.
    """
    out = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        if cls is not None:
            _check_path(cls, path, text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def validate(cls: type[R], raw: Mapping[str, Any], source: str) -> R:
    """``cls.model_validate(raw)`` with the first problem as one ConfigError line naming ``source`` and the field."""
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"invalid config {source}: {format_validation_error(e)}") from None


def load_recipe(cls: type[R], path: str | Path | None = None, overrides: Sequence[str] = ()) -> R:
    """Read a recipe of type ``cls`` from ``path`` (defaults alone when None), apply overrides, validate."""
    raw = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else cls.__name__
    if overrides:
        source += " (with overrides)"
    return validate(cls, apply_overrides(raw, overrides, cls), source)


def format_validation_error(e: ValidationError) -> str:
    """The first validation problem as ``field.path: message`` (plus a count of the rest)."""
    errs = e.errors()
    first = errs[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(root)"
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{loc}: {first['msg']}{more}"


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def _check_path(cls: type[BaseModel], path: list[str], text: str) -> None:
    """Refuse an override whose key is not a field of the recipe (walking nested pydantic models)."""
    model: Any = cls
    for depth, part in enumerate(path):
        fields = getattr(model, "model_fields", None)
        if fields is None:  # below a plain dict or list field: anything goes
            return
        if part not in fields:
            where = ".".join(path[:depth]) or cls.__name__
            known = ", ".join(sorted(fields))
            raise ConfigError(f"override '{text}': {where} has no field '{part}' (known: {known})")
        model = _model_type(fields[part].annotation)


def _model_type(annotation: Any) -> Any:
    """The pydantic model class inside an annotation (``Foo``, ``Foo | None``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_type(arg)
        if found is not None:
            return found
    return None
