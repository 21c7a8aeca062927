"""The pipeline's five parameter blocks as typed configs, validated once, before any step runs.

``validate_parameters(data=..., preprocessing=..., training=..., evaluation=..., registration=...)`` checks every
key and value of a run config and raises :class:`ConfigError` naming the offending path (for example
``training.curriculum.tau_0: unknown key``). The pipeline calls it while ZenML composes the run, so a typo fails
in seconds with no step started.

One home per default: the preprocessing block's fields and defaults come from ``data.preprocess.preprocess``'s
signature, the training block is ``training.TrainingConfig`` (with ``curriculum.CurriculumConfig`` inside), the
data block's quarantine limit is ``data.records.DEFAULT_MAX_QUARANTINE_FRACTION``; evaluation and registration
defaults live here and the steps read them from these models.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator


class ConfigError(ValueError):
    """A run-config problem; the message names the key path (``block.key[.subkey]``) and what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvaluationConfig(_Strict):
    """``evaluation:`` block. Lengths in tokens; ``n_boot`` bootstrap resamples (0 = no intervals)."""

    split: str = "test"
    max_new_tokens: int = Field(default=128, ge=1, le=4096)
    batch_size: int = Field(default=8, ge=1)
    n_boot: int = Field(default=1000, ge=0)
    evaluate_base: bool = True

    @field_validator("split")
    @classmethod
    def _known_split(cls, value: str) -> str:
        from medloc_core.data.records import SPLITS

        if value not in SPLITS:
            raise ValueError(f"must be one of {SPLITS}")
        return value


class RegistrationConfig(_Strict):
    """``registration:`` block. ``margin`` is in the metric's units (percentage points for A@0.5)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # "register" is the YAML key; the attribute is renamed because BaseModel has a `register` of its own.
    register_model: bool = Field(default=True, alias="register")
    metric: str = "eval/A@0.5"
    margin: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    require_beats_base: bool = True


class SourceConfig(_Strict):
    """One dataset of the ``data.sources`` list: a reader format and the folder as downloaded."""

    format: str
    root: str
    options: dict[str, Any] = Field(default_factory=dict)
    synth: dict[str, Any] | None = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from medloc_core.data.readers import FORMATS

        if value not in FORMATS:
            raise ValueError(f"unknown format {value!r}; choose one of {FORMATS}")
        return value


def _default_quarantine_fraction() -> float:
    from medloc_core.data.records import DEFAULT_MAX_QUARANTINE_FRACTION

    return DEFAULT_MAX_QUARANTINE_FRACTION


class DataConfig(_Strict):
    """``data:`` block: the sources and the share of input rows that may be quarantined."""

    sources: list[SourceConfig] | None = None
    max_quarantine_fraction: float = Field(default_factory=_default_quarantine_fraction, ge=0.0, le=1.0)


def _preprocessing_model() -> type[BaseModel]:
    """A strict model whose fields and defaults are ``preprocess``'s keyword arguments (one home)."""
    from medloc_core.data.preprocess import preprocess

    fields: dict[str, Any] = {}
    for name, param in inspect.signature(preprocess).parameters.items():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        annotation = param.annotation if not isinstance(param.annotation, str) else Any
        fields[name] = (annotation, param.default)
    return create_model("PreprocessingConfig", __base__=_Strict, **fields)


def preprocessing_config(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``preprocessing:`` block validated and completed with ``preprocess``'s defaults, as its kwargs."""
    settings = _check("preprocessing", _preprocessing_model(), value).model_dump()
    if settings.get("split_fractions") is not None:
        settings["split_fractions"] = tuple(settings["split_fractions"])
    return settings


def _errors(block: str, exc: ValidationError) -> ConfigError:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in (block, *err["loc"]))
        why = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{path}: {why} (got {err.get('input')!r:.80})")
    return ConfigError("invalid run config: " + "; ".join(lines))


def _check(block: str, model: type[BaseModel], value: Mapping[str, Any] | None) -> BaseModel:
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{block}: must be a mapping of settings, got {type(value).__name__}")
    try:
        return model.model_validate(dict(value or {}))
    except ValidationError as exc:
        raise _errors(block, exc) from None


def _check_training(value: Mapping[str, Any] | None) -> Any:
    from medloc_core.curriculum import CurriculumConfig
    from medloc_core.training import TrainingConfig

    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"training: must be a mapping of settings, got {type(value).__name__}")
    training = dict(value or {})
    accelerate = training.pop("accelerate", None)
    if accelerate is not None and not isinstance(accelerate, Mapping):
        raise ConfigError("training.accelerate: must be a mapping (num_processes, mixed_precision, ...)")
    curriculum = training.get("curriculum") or {}
    if not isinstance(curriculum, Mapping):
        raise ConfigError("training.curriculum: must be a mapping of CurriculumConfig fields")
    known = set(inspect.signature(CurriculumConfig).parameters)
    unknown = sorted(set(curriculum) - known)
    if unknown:
        raise ConfigError(
            f"training.curriculum.{unknown[0]}: unknown key (valid: {', '.join(sorted(known))})"
        )
    try:
        config = TrainingConfig.from_dict(training)
        config.curriculum_config()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"training: {exc}") from None
    return config


def validate_parameters(
    *,
    data: Mapping[str, Any] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    registration: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate the five blocks of a run config; return the typed configs. Raises :class:`ConfigError`."""
    return {
        "data": _check("data", DataConfig, data),
        "preprocessing": _check("preprocessing", _preprocessing_model(), preprocessing),
        "training": _check_training(training),
        "evaluation": _check("evaluation", EvaluationConfig, evaluation),
        "registration": _check("registration", RegistrationConfig, registration),
    }
