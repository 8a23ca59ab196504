"""Configs: nested dicts of defaults, a YAML file on top, then ``--set a.b=value`` overrides (DINOv2 style)."""

from __future__ import annotations

import copy
import os
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


def load_yaml_config(defaults: dict, path: str | os.PathLike | None, overrides: list[str] | None = None) -> dict:
    """``defaults`` updated by the YAML file at ``path`` and by ``overrides``; unknown top-level keys are errors."""
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
    cfg = apply_overrides(merge_config(defaults, user), overrides or [])
    unknown = set(cfg) - set(defaults)
    if unknown:
        raise InputError(path, "config", f"unknown keys {sorted(unknown)}")
    return cfg
