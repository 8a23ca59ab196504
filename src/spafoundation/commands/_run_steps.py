"""The steps of ``spafoundation run`` as typed configs: one dataclass per kind of step, its fields the settings the
run chooses for that step's command (named as the command's options, defaults from spafoundation/defaults.py).

A step config is checked when it is made, by its command's own parser's rules (the same types, ranges and choices
as on the command line), so a bad config value fails before any step runs, naming its config key. It renders itself
as the equivalent command line (what ``--dry-run`` prints and a finished step's marker records) and runs in this
process as its command's function, on the namespace its fields make over the command's defaults: no command line is
written and parsed again on the way."""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from spafoundation import defaults
from spafoundation.errors import InputError


def _setting(default=None, key: str | None = None):
    """A field whose value comes from the run config's ``key`` (named in the error when the value is refused)."""
    return field(default=default, metadata={"key": key} if key else {})


@functools.cache
def _parser(command: str) -> argparse.ArgumentParser:
    from spafoundation.cli import command_parser

    return command_parser(command)


@functools.cache
def _options(command: str) -> dict[str, argparse.Action]:
    """{dest: action} of every option of ``command`` (argparse keeps no public list of them)."""
    return {a.dest: a for a in _parser(command)._actions if a.default is not argparse.SUPPRESS}


def _argument(value):
    """A field's value as the command's function gets it from its parser: lists as comma-separated text, paths as
    text."""
    if isinstance(value, list):
        return ",".join(value)
    return str(value) if isinstance(value, Path) else value


def _kinds(hint) -> tuple:
    """The types a field's type hint allows, None left out: ``float | None`` -> ``(float,)``."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return tuple(t for t in (typing.get_args(hint) if union else (hint,)) if t is not type(None))


def _typed(value, hint):
    """``value`` as the field's type ``hint`` (str, float, int, Path, list[str], each maybe None), or None when it
    is not one."""
    for kind in _kinds(hint):
        if kind is Path and isinstance(value, str | os.PathLike):
            return Path(value)
        if kind is str and isinstance(value, str):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if typing.get_origin(kind) is list:
            names = value.split(",") if isinstance(value, str) else value
            if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
                return [n.strip() for n in names if n.strip()]
    return None


_WANTED = {str: "text", float: "a number", int: "a whole number", Path: "a path"}


def _wanted(hint) -> str:
    """What a field of type ``hint`` takes, for an error message: ``"a number"``, ``"a list of names"``."""
    return " or ".join(_WANTED.get(k, "a list of names") for k in _kinds(hint))


@dataclass(kw_only=True)
class RunStep:
    """What every step has: the dataset and how to read it, its sections, its output, the embedding cache and the
    encoders' precision. A subclass names its command (``command``), its marker (``name``) and what the run
    prints (``title``)."""

    command: ClassVar[str]
    name: ClassVar[str]
    title: ClassVar[str]
    positionals: ClassVar[tuple[str, ...]] = ("data",)

    data: str
    out: Path
    sections: list[str] | None = None
    cache_dir: str | None = None
    pipeline_precision: str | None = _setting(key="precision")
    bin_um: float | None = _setting(key="bin_um")
    image: str | None = _setting(key="image")
    image_scale: float | None = _setting(key="image_scale")
    mpp: float | None = _setting(key="mpp")

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        options = _options(self.command)
        for f in fields(self):
            setattr(self, f.name, self._checked(f, hints[f.name], options[f.name], getattr(self, f.name)))

    def _checked(self, f, hint, action: argparse.Action, value):
        """``value`` of field ``f`` of type ``hint``, checked as ``action`` (its command's option) checks it."""
        key = f.metadata.get("key")

        def refuse(reason: str):
            flag = action.option_strings[0] if action.option_strings else action.dest
            raise InputError(None, f"config ({self.title})", f"argument {flag}: {reason}"
                             + (f" (config key {key})" if key else ""))

        if value is None:  # left to the command's default where the field may be None
            if type(None) in typing.get_args(hint):
                return None
            refuse(f"must be {_wanted(hint)}, got None")
        typed = _typed(value, hint)
        if typed is None:
            refuse(f"must be {_wanted(hint)}, got {value!r}")
        if action.type is not None and isinstance(typed, int | float):
            try:  # the option's own rule: a positive number, a number from 0 to 1, ...
                typed = action.type(typed)
            except (argparse.ArgumentTypeError, ValueError) as e:
                refuse(str(e))
        if action.choices is not None and typed not in action.choices:
            refuse(f"invalid choice: {typed!r} (choose from {', '.join(map(repr, action.choices))})")
        return typed

    @property
    def argv(self) -> list[str]:
        """The equivalent command line, without the program name: what ``--dry-run`` prints and a finished step's
        marker records (the options every step shares last)."""
        options = _options(self.command)
        words = [self.command, *(str(_argument(getattr(self, n))) for n in self.positionals)]
        shared = {f.name for f in fields(RunStep)} - {"data", "out", "sections"}
        for f in sorted((f for f in fields(self) if f.name not in self.positionals), key=lambda f: f.name in shared):
            value = getattr(self, f.name)
            if value is None or value is False:
                continue
            flag = options[f.name].option_strings[0]
            words += [flag] if value is True else [flag, str(_argument(value))]
        return words

    def command_line(self) -> str:
        """``argv`` as one line a shell runs: ``spafoundation cluster DATA --out ...``."""
        return "spafoundation " + " ".join(shlex.quote(a) for a in self.argv)

    def namespace(self, *, quiet: bool = False) -> argparse.Namespace:
        """The arguments the command's function gets: its parser's defaults, with this step's fields over them (what
        parsing ``argv`` would give, without parsing it)."""
        ns = argparse.Namespace(func=_parser(self.command).get_default("func"), argv=self.argv)  # as cli.main sets
        for dest, action in _options(self.command).items():
            default = action.default
            if isinstance(default, str) and action.type is not None:  # argparse passes a text default through type
                default = action.type(default)
            setattr(ns, dest, default)
        for f in fields(self):
            if getattr(self, f.name) is not None:  # None leaves the command's default, as ``argv`` leaves the flag out
                setattr(ns, f.name, _argument(getattr(self, f.name)))
        ns.quiet = quiet
        return ns

    def run(self, data: dict, *, quiet: bool = False) -> int:
        """Run the step in this process on ``data``, the sections the run read (the command works on copies), under
        the output rule (``cli.call_command``); its exit code."""
        from spafoundation.cli import call_command

        return call_command(self.namespace(quiet=quiet), data)

    def named_paths(self) -> list[str]:
        """Its fields' values that name an existing file or folder: the dataset, a model, a gene list, an encoder
        folder (and its own output and the cache, which ``run`` leaves out of its fingerprints)."""
        values = (getattr(self, f.name) for f in fields(self))
        return [str(v) for v in values if isinstance(v, str | Path) and str(v) and os.path.exists(v)]


@dataclass(kw_only=True)
class FitExpressionStep(RunStep):
    """``fit-expression``: the expression model, fitted on the imaged sections with counts."""

    command = "fit-expression"
    name = "fit_expression"
    title = "fit expression"

    genes: str = _setting(defaults.EXPRESSION_GENES, "expression.genes")
    head: str = _setting(defaults.EXPRESSION_HEAD, "expression.head")
    programs: int | None = _setting(key="expression.programs")
    reference: str | None = _setting(key="expression.reference")
    reference_sections: list[str] | None = field(default=None, metadata={"key": "expression.reference_sections"})
    encoder: str = _setting(defaults.ENCODER, "encoder")
    stain_norm: str | None = _setting(key="stain_norm")


@dataclass(kw_only=True)
class PredictExpressionStep(RunStep):
    """``predict-expression``: expression of the sections to predict, from a fitted model (the run's own or
    expression.model), with metrics where they have counts."""

    command = "predict-expression"
    name = "predict_expression"
    title = "predict expression"
    positionals = ("model", "data")

    model: str = _setting(key="expression.model")


@dataclass(kw_only=True)
class SuperresStep(RunStep):
    """``superres``: superpixel expression maps of every imaged section, trained on ``train_sections``."""

    command = "superres"
    name = "superres"
    title = "super-resolution maps"

    train_sections: list[str] | None = None
    genes: str = _setting(defaults.SUPERRES_GENES, "superres.genes")
    encoder: str = _setting(defaults.ENCODER, "encoder")
    step_um: float | None = _setting(key="superres.step_um")


@dataclass(kw_only=True)
class TumorStep(RunStep):
    """``tumor``: tumour probability or marker score of every imaged section's spots and tissue grid."""

    command = "tumor"
    name = "tumor"
    title = "tumour map"

    train_sections: list[str] | None = None
    grid_um: float = _setting(defaults.TUMOR_GRID_UM, "tumor.grid_um")
    encoder: str = _setting(defaults.ENCODER, "encoder")
    route: str | None = _setting(key="tumor.route")
    label_column: str | None = _setting(key="tumor.label_column")
    markers: list[str] | None = field(default=None, metadata={"key": "tumor.markers"})
    stain_norm: str | None = _setting(key="stain_norm")


@dataclass(kw_only=True)
class ClusterStep(RunStep):
    """``cluster``: spatial domains shared across the imaged sections."""

    command = "cluster"
    name = "clusters"
    title = "spatial domains"

    features: str = _setting(defaults.DOMAIN_FEATURES, "clusters.features")
    method: str = _setting(defaults.DOMAIN_METHOD, "clusters.method")
    n_clusters: int = _setting(defaults.N_DOMAINS, "clusters.n_clusters")
    smooth: float = _setting(defaults.DOMAIN_SMOOTH, "clusters.smooth")
    grid_um: float = _setting(defaults.DOMAIN_GRID_UM, "clusters.grid_um")
    genes: str = defaults.DOMAIN_EXPRESSION_GENES
    encoder: str = _setting(defaults.ENCODER, "encoder")
    expression_model: str | None = None
    reference_column: str | None = _setting(key="clusters.reference_column")
    stain_norm: str | None = _setting(key="stain_norm")  # on image features only
