"""Optional dependencies load inside the functions that need them; a missing one names its extra."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str = "local") -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        msg = f"{module} is not installed; install the `{extra}` extra: pip install 'mma-agent[{extra}]'"
        raise ImportError(msg) from err
