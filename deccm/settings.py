"""Settings: each one declared once, as a dataclass field, and everything else made from it.

A run's settings reach deccm four ways: the pipeline's defaults, the DAG's Airflow Params, the
CLIs' options and plain dicts (TOML ``[train]`` tables, Airflow conf, XCom). All four are made
here from one declaration, :func:`setting` (default, help, choices, bounds), read by
:func:`specs`; values from any of them pass one converter, :meth:`Spec.convert`. A new
setting, or a new bound, is written once (docs/architecture.md, "Settings").

Imports the metric table and the variant names only (no torch, MLflow or Airflow): the DAG
file builds its Params from :class:`Pipeline` while Airflow parses it.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from deccm import metrics
from deccm.variants import MODES, RECOMMENDED, VARIANTS

SOURCES = ("synth-tiny", "synth-small", "synth-tt150k", "demo-tiny", "demo", "recorded-tiny", "recorded", "media")
ENV_SOURCE = "DECCM_SOURCE"  # deployment config: the source scheduled runs train on (docker/compose.yaml sets it)
# What a gate may decide on: higher-is-better, per-row metrics in [0, 1] (deccm.gate); and where it may score them
# (test and test_oracle judge the final model and must never choose it).
GATE_METRICS = tuple(m.name for m in metrics.METRICS.values() if m.direction == 1 and m.per_row and m.bounded)
GATE_SPLITS = ("gate", "val")
DEVICES = ("auto", "cpu", "cuda")
# Student variant and loop settings per source. By default the best model measured on the synthetic benchmark
# (docs/results.md) with the authors' loop (1024-row batches, 50 epochs, made for 100k rows). The demo corpus has
# about 1,000 training rows, where one batch an epoch left the models barely trained; its settings and variant were
# chosen on its validation split over three corpus seeds (docs/results.md, "The demo corpus").
TRAINING: dict[str, dict[str, Any]] = {
    "default": {"variant": RECOMMENDED, "epochs": 50, "batch_size": 1024, "balance_blocks": False},
    "demo": {"variant": "plain", "epochs": 200, "batch_size": 128, "lr": 1e-3, "balance_blocks": True},
}
TRAINING["recorded"] = TRAINING["demo"]  # the same clips and row counts over a recorded catalog (docs/results.md)
_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_JSON_TYPE = {int: "integer", float: "number", str: "string", bool: "boolean"}


class SettingsError(ValueError):
    """A setting is refused; the message names it, the value and the rule."""


def setting(default: Any, help: str, *, choices: typing.Iterable[Any] | None = None, minimum: float | None = None,
            maximum: float | None = None, above: float | None = None) -> Any:
    """A dataclass field that declares a setting: its default, what it does, and the values it accepts.

    ``minimum``/``maximum`` are inclusive bounds, ``above`` an exclusive lower bound. A field typed
    ``T | None`` accepts None (empty), meaning "not given": the caller's default applies.
    """
    return field(default=default, metadata={"help": help, "choices": None if choices is None else tuple(choices),
                                            "minimum": minimum, "maximum": maximum, "above": above})


def _per_source(key: str) -> str:
    """"empty = the source's (demo 200, recorded 200; else 50)" for a setting :data:`TRAINING` fills in."""
    per = ", ".join(f"{src} {vals[key]}" for src, vals in TRAINING.items() if src != "default" and key in vals)
    fallback = TRAINING["default"].get(key)
    return f"empty = the source's ({per}; else {fallback})" if fallback is not None else f"empty = the source's ({per})"


@dataclass(frozen=True)
class Spec:
    """One setting as :func:`specs` reads it from its field."""

    name: str
    type: type  # int, float, str or bool
    nullable: bool  # None (empty) is accepted and means "not given"
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def convert(self, value: Any) -> Any:
        """``value`` (typed, or text from a command line or an environment) as this setting's type, checked.

        Raises :class:`SettingsError` naming the setting, the value and the rule.
        """
        if value is None or (value == "" and self.type is not str):
            if self.nullable:
                return None
            self._refuse(value, "it needs a value")
        try:
            out = self._typed(value)
        except (TypeError, ValueError):
            self._refuse(value, f"it must be {self._kind()}")
        if self.choices is not None and out not in self.choices:
            self._refuse(value, f"choose one of {', '.join(str(c) for c in self.choices)}")
        if self.minimum is not None and out < self.minimum:
            self._refuse(value, f"it must be at least {self.minimum:g}")
        if self.maximum is not None and out > self.maximum:
            self._refuse(value, f"it must be at most {self.maximum:g}")
        if self.above is not None and out <= self.above:
            self._refuse(value, f"it must be above {self.above:g}")
        return out

    def _typed(self, value: Any) -> Any:
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if not isinstance(value, str):
                raise TypeError(value)
            word = value.strip().lower()
            if word in _YES or word in _NO:
                return word in _YES
            raise ValueError(value)
        if isinstance(value, bool):  # True is an int to Python, never a number to a person
            raise TypeError(value)
        if self.type is int:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, (int, str)):
                return int(value)
            raise TypeError(value)
        if self.type is float:
            if not isinstance(value, (int, float, str)):
                raise TypeError(value)
            out = float(value)
            if not math.isfinite(out):
                raise ValueError(value)
            return out
        if isinstance(value, (str, os.PathLike)):
            return str(value)
        raise TypeError(value)

    def _kind(self) -> str:
        return {int: "an integer", float: "a finite number", bool: "true or false", str: "text"}[self.type]

    def _refuse(self, value: Any, rule: str) -> typing.NoReturn:
        raise SettingsError(f"{self.name}={value!r} is refused: {rule}. ({self.name}: {self.help})")

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema an Airflow ``Param`` checks (the same rules as :meth:`convert`)."""
        t = _JSON_TYPE[self.type]
        schema: dict[str, Any] = {"type": ["null", t] if self.nullable else t}
        if self.choices is not None:
            schema["enum"] = ([None] if self.nullable else []) + list(self.choices)
        for key, bound in (("minimum", self.minimum), ("maximum", self.maximum), ("exclusiveMinimum", self.above)):
            if bound is not None:
                schema[key] = bound
        return schema

    def option(self) -> typing.Callable[[str], Any]:
        """An argparse ``type`` that converts and checks one command-line value (argparse prints the refusal)."""
        def parse(text: str) -> Any:
            try:
                return self.convert(text)
            except SettingsError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        parse.__name__ = self.name
        return parse


@functools.cache
def specs(cls: type) -> tuple[Spec, ...]:
    """The settings a dataclass declares, in field order (fields made without :func:`setting` get a bare spec)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else ()
        base = next((a for a in args if a is not type(None)), hint)
        if base not in _JSON_TYPE:
            raise TypeError(f"{cls.__name__}.{f.name}: a setting is int, float, str or bool (optionally | None), not {hint}")
        default = f.default if f.default is not MISSING else None
        meta = f.metadata
        out.append(Spec(f.name, base, type(None) in args, default, meta.get("help", ""), meta.get("choices"),
                        meta.get("minimum"), meta.get("maximum"), meta.get("above")))
    return tuple(out)


def spec(cls: type, name: str) -> Spec:
    return next(s for s in specs(cls) if s.name == name)


def defaults(cls: type) -> dict[str, Any]:
    """Every setting of ``cls`` with its default."""
    return {s.name: s.default for s in specs(cls)}


def convert(cls: type, values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The given settings of ``cls`` (None or "" means not given, so they are left out), converted and checked.

    Unknown keys are refused with the known ones, so a typo never silently trains with a default.
    """
    known = {s.name: s for s in specs(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingsError(f"unknown {what} {unknown}. Fix: use {sorted(known)}")
    return {k: known[k].convert(v) for k, v in values.items() if v is not None and v != ""}


def add_options(parser: argparse.ArgumentParser, cls: type, help: Mapping[str, str] | None = None) -> None:
    """One ``--name`` option per setting; unset options stay None, so a config file or the schema's default applies."""
    for s in specs(cls):
        text = (help or {}).get(s.name) or f"{s.help} (default: {'empty' if s.default is None else s.default})"
        parser.add_argument(s.flag, type=s.option(), default=None, metavar=s.name.upper(), help=text.replace("%", "%%"))


def table(cls: type) -> str:
    """The settings of ``cls`` as a markdown table (name, default, accepted values, what it does), for the docs."""
    def accepted(s: Spec) -> str:
        if s.choices is not None:
            return ", ".join(f"`{c}`" for c in s.choices)
        bounds = [f"≥ {s.minimum:g}" if s.minimum is not None else "", f"> {s.above:g}" if s.above is not None else "",
                  f"≤ {s.maximum:g}" if s.maximum is not None else ""]
        kind = {int: "integer", float: "number", str: "text", bool: "true / false"}[s.type]
        return f"{kind} {', '.join(b for b in bounds if b)}".strip()

    rows = ["| setting | default | accepts | what it does |", "|---|---|---|---|"]
    for s in specs(cls):
        default = "empty" if s.default is None else f"`{s.default}`"
        rows.append(f"| `{s.name}` | {default} | {accepted(s)}{' (or empty)' if s.nullable else ''} | "
                    f"{s.help.replace('|', '/')} |")
    return "\n".join(rows)


def airflow_params(cls: type) -> dict[str, Any]:
    """Airflow ``Param``s for the DAG's trigger form and conf: the defaults, the help, and the rules as JSON Schema."""
    from airflow.sdk import Param

    return {s.name: Param(s.default, description=s.help, **s.json_schema()) for s in specs(cls)}


@dataclass(frozen=True)
class Pipeline:
    """The settings of one pipeline run (``deccm.pipeline.make_config`` fills in the per-source ones and checks the
    combinations)."""

    source: str = setting("demo", "synth-* = generated synthetic benchmark; demo-tiny / demo = generated real-media demo "
                          "corpus; recorded-tiny / recorded = Debian's soundtrack packages (the workers need them: make "
                          f"music-packages) with generated clips; media = your folders and CSVs below (${ENV_SOURCE} when set)",
                          choices=SOURCES)
    seed: int = setting(0, "data seed of generated sources, split seed of assembled ones", minimum=0)
    videos: str | None = setting(None, "source media: folder of clips")
    tracks: str | None = setting(None, "source media: folder of tracks")
    logs: str | None = setting(None, "source media: usage-log CSV video,track[,uploader]")
    tracks_meta: str | None = setting(None, "source media: track metadata CSV id,title,artist,genre,licence,path")
    pgc: str | None = setting(None, "source media, optional: folder of professionally edited clips (trains a teacher)")
    pgc_pairs: str | None = setting(None, "source media, optional: CSV segment,track for the pgc clips")
    epochs: int | None = setting(None, "student training epochs (and the teacher's unless teacher_epochs); "
                                 + _per_source("epochs"), minimum=1)
    teacher_epochs: int | None = setting(None, "teacher epochs; empty = epochs", minimum=1)
    batch_size: int | None = setting(None, "rows per batch; " + _per_source("batch_size"), minimum=2)
    lr: float | None = setting(None, "learning rate; " + _per_source("lr") + " or the model's default", above=0)
    train_seed: int = setting(1234, "training seed")
    variant: str | None = setting(None, "student variant (docs/results.md); " + _per_source("variant") + "; deccm in "
                                  "faithful mode. A distilling one falls back to its plain form without PGC data",
                                  choices=VARIANTS)
    balance_blocks: bool | None = setting(None, "each feature block (CNN frames, motion; embedding, descriptors) gets "
                                          "equal weight at the encoders' input; " + _per_source("balance_blocks"))
    mode: str = setting("fixed", "fixed = the corrected method, faithful = the authors' code", choices=MODES)
    gate_metric: str = setting("HR@10", "gate: primary metric (higher is better, per row, in [0, 1])", choices=GATE_METRICS)
    gate_split: str = setting("gate", "gate: held-out split both models are scored on (gate; val for older datasets; "
                              "never test or its oracle)", choices=GATE_SPLITS)
    gate_margin: float = setting(0.005, "gate: the one-sided lower 95 % bound of challenger minus champion must exceed this",
                                 minimum=0.0, maximum=1.0)
    gate_floor: float = setting(0.15, "gate: absolute floor of the primary metric (chance HR@10 is 0.099)",
                                minimum=0.0, maximum=1.0)
    bias_tolerance: float = setting(0.05, "gate: how much worse the bias metrics may get", minimum=0.0, maximum=1.0)
    shards: int = setting(4, "extraction shards per media kind (parallel mapped tasks)", minimum=1)
    window_hop_s: float = setting(1.0, "moments: a window starts every this many seconds (beatless tracks); registered "
                                  "with the model", above=0.0, maximum=2.0)
    device: str = setting("auto", "auto = CUDA when present", choices=DEVICES)
