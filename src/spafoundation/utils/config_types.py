"""Type checks of a config's values against its defaults: a number where the default is a number, a whole number
where it is a whole number, true/false where it is true/false. A value of the wrong type (``--set
optim.steps=abc``) is then an error naming the key before any work, not a traceback once the work has begun."""

from __future__ import annotations

import math

from spafoundation.errors import InputError


def _kind(default) -> str | None:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return None


def check_value_types(cfg: dict, defaults: dict, path=None, where: str = "", *, allow_none: bool = False) -> None:
    """An InputError naming the first key of ``cfg`` whose value's type differs from its default's (keys whose
    default is None, a string or a list take any value; unknown keys are the caller's to refuse). ``allow_none``:
    null is accepted everywhere (a config where it means 'off' or 'the default'). A number written as text where
    the default is a float (``lr: 1e-4``, which YAML 1.1 reads as text) is turned into the number in ``cfg``."""
    for key, default in defaults.items():
        if key not in cfg:
            continue
        value, name = cfg[key], f"{where}{key}"
        if isinstance(default, dict):
            if isinstance(value, dict):
                check_value_types(value, default, path, f"{name}.", allow_none=allow_none)
            continue
        kind = _kind(default)
        if value is None and allow_none:
            continue
        if kind == "bool" and not isinstance(value, bool):
            raise InputError(path, name, f"must be true or false, got {value!r}")
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise InputError(path, name, f"must be a whole number, got {value!r}")
        if kind == "float" and isinstance(value, str):
            try:  # YAML 1.1 reads 1e-4 (no dot) as text
                value = cfg[key] = float(value)
            except ValueError:
                pass
        if kind == "float" and (isinstance(value, bool) or not isinstance(value, int | float)
                                or not math.isfinite(value)):
            raise InputError(path, name, f"must be a number, got {value!r}")
