"""The pipeline's five parameter blocks as typed configs: the pipeline's and the steps' parameter types.

ZenML validates a run config's ``parameters:`` against these models while it composes the run, so an unknown or
mistyped key anywhere (``extra="forbid"``) fails in seconds, named by its path (``training.curriculum.tau_0``),
before any step starts. ``medloc train --config`` reads the same :class:`~medloc_core.training.config.TrainingConfig`, the object that
runs: it is validated once, here, and handed to the trainer as is.

One home per default: the preprocessing block is generated from ``data.preprocess.preprocess``'s keyword
arguments, the training block *is* ``training.config.TrainingConfig`` (its curriculum
``curriculum.config.CurriculumConfig``), the evaluation block is ``evaluation.EvaluationConfig``, the data block's quarantine limit is ``data.records.DEFAULT_MAX_QUARANTINE_
FRACTION``; registration defaults live here.

Settings that must agree between stages travel with the data: answer style and the processor's pixel bounds (the
input frame of the boxes) are the preprocessing's, read back from the manifest by training, evaluation (the
prompts are in the prepared table) and registration (the served model's prompt). :func:`check_agreement` refuses
a training block that states them differently.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from medloc_core import masking
from medloc_core.data.preprocess import check_options as check_preprocess_options
from medloc_core.data.preprocess import preprocess
from medloc_core.data.readers import FORMATS, READERS
from medloc_core.data.records import DEFAULT_MAX_QUARANTINE_FRACTION
from medloc_core.data.synth import KINDS, generate
from medloc_core.data.synth_render import Difficulty
from medloc_core.evaluation.metrics import gate_metric_problem
from medloc_core.evaluation.runner import EvaluationConfig
from medloc_core.paths import export_medloc_home
from medloc_core.training.config import TrainingConfig


class ConfigError(ValueError):
    """A run-config problem; the message names the key path (``block.key[.subkey]``) and what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------------------------ data


def _keywords(function: Any, *skip: str) -> list[str]:
    return [
        name
        for name, param in inspect.signature(function).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY and name not in skip
    ]


class SourceConfig(_Strict):
    """One dataset of the ``data.sources`` list: a reader format, the folder as downloaded, the reader's keyword
    options, and optionally ``synth`` (``data.synth.generate``'s arguments) to generate it there first."""

    format: str
    root: str
    options: dict[str, Any] = Field(default_factory=dict)
    synth: dict[str, Any] | None = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in FORMATS:
            raise ValueError(f"unknown format {value!r}; choose one of {FORMATS}")
        return value

    @model_validator(mode="after")
    def _known_options(self) -> SourceConfig:
        # Passed on as keyword arguments at ingest time: an unknown name fails here, before any step runs.
        valid = _keywords(READERS[self.format], "max_quarantine_fraction")
        for key in self.options:
            if key not in valid:
                raise ValueError(f"options.{key}: not an option of the {self.format} reader (valid: {valid})")
        if self.synth is not None:
            valid = ["kind", *_keywords(generate)]
            for key in self.synth:
                if key not in valid:
                    raise ValueError(f"synth.{key}: unknown key (valid: {valid})")
            if self.synth.get("kind") not in KINDS or "n" not in self.synth:
                raise ValueError(f"synth: needs 'kind' (one of {KINDS}) and 'n'")
            difficulty = self.synth.get("difficulty") or {}
            allowed = [f.name for f in dataclasses.fields(Difficulty)]
            for key in difficulty:
                if key not in allowed:
                    raise ValueError(f"synth.difficulty.{key}: unknown key (valid: {allowed})")
        return self


class DataConfig(_Strict):
    """``data:`` block: the sources (None: the bundled synthetic set) and the share of input rows that may be
    quarantined."""

    sources: list[SourceConfig] | None = None
    max_quarantine_fraction: float = Field(default=DEFAULT_MAX_QUARANTINE_FRACTION, ge=0.0, le=1.0)

    @field_validator("sources")
    @classmethod
    def _some_sources(cls, value: list[SourceConfig] | None) -> list[SourceConfig] | None:
        if value is not None and not value:
            raise ValueError("empty: name at least one dataset (format + root), or leave sources out")
        return value


# --------------------------------------------------------------------------------------- preprocessing


def _fields_of_signature(function: Any) -> dict[str, Any]:
    hints, params = typing.get_type_hints(function), inspect.signature(function).parameters
    return {name: (hints.get(name, Any), params[name].default) for name in _keywords(function)}


class _PreprocessingBase(_Strict):
    @model_validator(mode="after")
    def _runnable(self) -> _PreprocessingBase:
        check_preprocess_options(**self.model_dump())  # the rules preprocess() itself applies, at parse time
        return self


#: ``preprocessing:`` block: ``preprocess``'s keyword arguments and their defaults (pixels are areas in px²).
PreprocessingConfig = create_model(
    "PreprocessingConfig",
    __base__=_PreprocessingBase,
    __module__=__name__,
    **_fields_of_signature(preprocess),
)


def preprocess_kwargs(config: BaseModel) -> dict[str, Any]:
    """A validated preprocessing block as ``preprocess``'s keyword arguments."""
    settings = config.model_dump()
    if settings.get("split_fractions") is not None:
        settings["split_fractions"] = tuple(settings["split_fractions"])
    return settings


# -------------------------------------------------------------------------------------------- training


# ---------------------------------------------------------------------------------- evaluation, registry


class RegistrationConfig(_Strict):
    """``registration:`` block. ``margin`` is in the metric's units (percentage points for A@0.5).

    ``require_significant_gain`` (with ``require_beats_base``): promote only when the paired-bootstrap 95 %
    interval of the gain over the base model on the test images lies above 0 (``promotion.decide_promotion``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # "register" is the YAML key; the attribute is renamed because BaseModel has a `register` of its own.
    register_model: bool = Field(default=True, alias="register")
    metric: str = "eval/A@0.5"
    margin: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    require_beats_base: bool = True
    require_significant_gain: bool = True

    @model_validator(mode="after")
    def _comparable_metric(self) -> RegistrationConfig:
        # A metric evaluation never writes would register versions the gate can never compare.
        problem = gate_metric_problem(
            self.metric, needs_gain=self.require_beats_base and self.require_significant_gain
        )
        if problem:
            raise ValueError(f"metric: {problem}")
        return self


# ------------------------------------------------------------------------------------------ the whole


#: Training fields whose values are the preprocessing's (they travel in the manifest).
FROM_PREPROCESSING = ("answer_style", "min_pixels", "max_pixels")

BLOCKS: dict[str, type[BaseModel]] = {
    "data": DataConfig,
    "preprocessing": PreprocessingConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
    "registration": RegistrationConfig,
}


def check_agreement(preprocessing: BaseModel, training: BaseModel) -> None:
    """Refuse a training block that states an answer style or pixel bounds other than the preprocessing's:
    training reads them from the manifest, so a different value there would be silently overridden."""
    for name in FROM_PREPROCESSING:
        if name in training.model_fields_set and getattr(training, name) != getattr(preprocessing, name):
            raise ConfigError(
                f"training.{name}: {getattr(training, name)!r} differs from preprocessing.{name} "
                f"({getattr(preprocessing, name)!r}); it comes from the preprocessing, leave it out of training"
            )


def _errors(block: str, exc: ValidationError) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        why = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        got = f" (got {err.get('input')!r:.80})"
        named = re.match(r"([A-Za-z_][\w.\[\]]*): ", why)
        if not loc and named:  # a cross-field rule names its key first: "max_pixels: ... below min_pixels"
            loc, why, got = [named.group(1)], why[named.end() :], ""
        lines.append(f"{'.'.join((block, *loc))}: {why}{got}")
    return ConfigError("invalid run config: " + "; ".join(lines))


def parse_block(block: str, value: Mapping[str, Any] | BaseModel | None) -> BaseModel:
    """One block (``"training"``, ...) as its model; raises :class:`ConfigError` naming the key path."""
    model = BLOCKS[block]
    if isinstance(value, model):
        return value
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{block}: must be a mapping of settings, got {type(value).__name__}")
    try:
        return model.model_validate(dict(value or {}))
    except ValidationError as exc:
        raise _errors(block, exc) from None


def check_data_roots(data: BaseModel) -> None:
    """Refuse a local data root that does not exist unless the source generates it (``synth:``). Only for runs
    whose steps run on this machine: a Kubernetes pod mounts its roots, which need not exist here."""
    for i, source in enumerate(data.sources or []):
        try:
            root = masking.reveal(source.root)
        except KeyError as exc:
            raise ConfigError(f"data.sources[{i}].root: {exc.args[0]}") from None
        if source.synth is None and "://" not in root and not Path(root).expanduser().exists():
            raise ConfigError(
                f"data.sources[{i}].root: {root} does not exist (point it at the dataset folder as downloaded, "
                "or add a synth: block to generate one there)"
            )


def substitute_placeholders(value: Any, *, env: Mapping[str, str] | None = None, where: str = "") -> Any:
    """``value`` (YAML data) with every ``${VAR}`` replaced by the environment's value; a missing variable is a
    :class:`ConfigError` naming the key path."""
    env = os.environ if env is None else env
    if isinstance(value, Mapping):
        return {
            k: substitute_placeholders(v, env=env, where=f"{where}.{k}".lstrip(".")) for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute_placeholders(v, env=env, where=f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):

        def _value(match: re.Match) -> str:
            if match.group(1) not in env:
                raise ConfigError(f"{where}: environment variable {match.group(1)} is not set")
            return env[match.group(1)]

        return masking.PLACEHOLDER.sub(_value, value)
    return value


def load_run_config(path: str | os.PathLike) -> dict[str, BaseModel]:
    """Read a run config file (``zenml pipeline run medloc_training -c PATH``) and validate its ``parameters:``
    as the pipeline will, ``${VAR}`` substituted; every problem is a one-line :class:`ConfigError` that names
    the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the run config ({type(exc).__name__}: {exc})") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        why = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML{line}: {why}") from None
    content = {} if content is None else content
    if not isinstance(content, Mapping):
        raise ConfigError(
            f"{path}: the top level must be a mapping (parameters:, settings:, ...), got a {type(content).__name__}"
        )
    parameters = content.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise ConfigError(
            f"{path}: parameters: must be a mapping of blocks, got a {type(parameters).__name__}"
        )
    try:
        export_medloc_home()  # as the pipeline module does before ZenML substitutes ${MEDLOC_HOME}
        return validate_parameters(**substitute_placeholders(dict(parameters), where="parameters"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def validate_parameters(**blocks: Mapping[str, Any] | BaseModel | None) -> dict[str, BaseModel]:
    """Validate the blocks of a run config (all five when given none); return the typed configs."""
    unknown = sorted(set(blocks) - set(BLOCKS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown parameter block (valid: {', '.join(BLOCKS)})")
    parsed = {name: parse_block(name, blocks.get(name)) for name in BLOCKS}
    check_agreement(parsed["preprocessing"], parsed["training"])
    return parsed
