"""Configs: nested dicts of defaults, a YAML file on top, then ``--set a.b=value`` overrides (DINOv2 style).

The defaults are the schema: a key that is not in them, at any depth, is an error that names it. A mapping whose
default is empty is described in ``sections``: the keys it takes, or ``FREE`` for a library's own keyword arguments
(timm's)."""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Collection
from pathlib import Path

import yaml

from spafoundation.errors import InputError


def merge_config(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        out[k] = merge_config(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_value(text: str):
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """``optim.steps=200`` style overrides; values parsed as YAML (numbers, lists, null)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(None, "--set", f"expected key=value, got {item!r}")
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(None, "--set", f"{key}: {p} is not a section")
        node[leaf] = _parse_value(value)
    return cfg


FREE = None  # in ``sections``: a mapping whose keys are not checked


def check_keys(cfg: dict, defaults: dict, sections: dict[str, Collection[str] | None] | None = None, *,
               path: str | os.PathLike | None = None, where: str = "") -> None:
    """An InputError naming the first key of ``cfg`` (dotted, with the closest known key) that the schema lacks,
    or a section given as something other than a mapping."""
    sections = sections or {}
    for key, value in cfg.items():
        dotted = f"{where}{key}"
        known = sections[where.rstrip(".")] if where.rstrip(".") in sections else defaults
        if known is FREE:
            return
        if key not in known:
            close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
            hint = f" (did you mean {where}{close[0]}?)" if close else f"; known: {', '.join(sorted(map(str, known)))}"
            raise InputError(path, dotted, f"unknown setting{hint}")
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(default, dict) or dotted in sections:
            if not isinstance(value, dict):
                raise InputError(path, dotted, f"must be a mapping, got {value!r}")
            check_keys(value, default if isinstance(default, dict) else {}, sections, path=path,
                       where=f"{dotted}.")


def load_yaml_config(defaults: dict, path: str | os.PathLike | None, overrides: list[str] | None = None,
                     sections: dict[str, Collection[str] | None] | None = None) -> dict:
    """``defaults`` updated by the YAML file at ``path`` and by ``overrides``; a key the schema lacks (see
    ``check_keys``), at any depth, is an InputError naming it."""
    user = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "--config", "config file not found")
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(path, "config", f"invalid YAML ({e})") from None
        if not isinstance(user, dict):
            raise InputError(path, "config", "expected a mapping at the top level")
    check_keys(user, defaults, sections, path=path)
    cfg = apply_overrides(merge_config(defaults, user), overrides or [])
    check_keys(cfg, defaults, sections)  # what --set added
    return cfg
