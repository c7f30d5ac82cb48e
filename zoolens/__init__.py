"""``zoolens`` for notebooks: ``from zoolens import read`` reads any model with a trained interpreter
(``cluster.tracking.reader.read``; the command line is ``zoolens read``)."""

from __future__ import annotations

from typing import Any


def read(*args: Any, **kwargs: Any) -> Any:
    """Read one model (see ``cluster.tracking.reader.read``); imported on first call, so ``import zoolens`` is cheap."""
    from cluster.tracking.reader import read as _read

    return _read(*args, **kwargs)


__all__ = ["read"]
