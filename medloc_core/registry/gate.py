"""The promotion gate as pure functions of metric dicts: whether a candidate may be registered at all
(``registration_blockers``) and whether it becomes ``champion`` (``decide_promotion``: it beats the base model,
significantly when required, and the current champion by the margin on the same evaluation set). Moving the alias
is ``promote.py``; metric units are ``evaluation.metrics``' (A@τ and pseudo-mAP in percent, mIoU 0-1).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medloc_core.registry.versions import DEFAULT_METRIC
from medloc_core.tracking import DEAD_TAIL_STEPS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionDecision:
    """Whether to promote, and why (one human-readable sentence per check, in order)."""

    promote: bool
    reasons: list[str] = field(default_factory=list)
    #: Nothing was decided or changed (the version is already the champion): its recorded decision stands.
    unchanged: bool = False


def metric_value(metrics: Mapping[str, Any] | None, metric: str) -> float | None:
    if metrics is None or metric not in metrics:
        return None
    try:
        value = float(metrics[metric])
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None  # NaN or ±inf is a broken evaluation, never a winner


# Registration gate: a model this broken is never registered (it would only move @challenger to garbage).
MAX_PARSE_FAILURE_RATE = 0.9
TAG_SKIPPED = "medloc.registration.skipped"


def registration_blockers(metrics: Mapping[str, Any], history: list[Mapping[str, Any]]) -> list[str]:
    """Why the evaluated model must not be registered (empty list: register it).

    ``metrics``: the evaluation (``eval/parse_failure_rate`` in [0, 1]); ``history``: the per-step training
    rows (``train/frac_reward_zero_std``, the share of GRPO groups whose rewards all tie).
    """
    reasons = []
    rate = metric_value(metrics, "eval/parse_failure_rate")
    if rate is not None and rate >= MAX_PARSE_FAILURE_RATE:
        reasons.append(
            f"the model's answers failed to parse on {rate:.0%} of the test images "
            f"(limit {MAX_PARSE_FAILURE_RATE:.0%})"
        )
    tail = [r.get("train/frac_reward_zero_std") for r in history[-DEAD_TAIL_STEPS:]]
    tail = [float(v) for v in tail if v is not None and not math.isnan(float(v))]
    if tail and len(tail) == min(DEAD_TAIL_STEPS, len(history)) and min(tail) >= 1.0:
        reasons.append(
            f"every GRPO group was dead (all rewards tied, no gradient) over the last {len(tail)} training steps"
        )
    return reasons


def gain_key(metric: str) -> str:
    """``eval/A@0.5`` -> ``eval/gain/A@0.5``: where ``evaluation.paired_gain`` puts the paired gain of ``metric``."""
    prefix, _, name = metric.rpartition("/")
    return f"{prefix}/gain/{name}" if prefix else f"gain/{name}"


def _gain_is_significant(candidate: Mapping[str, Any], metric: str) -> tuple[bool, str]:
    """Whether the paired gain's 95 % lower bound is > 0, and one sentence that states the interval."""
    key = gain_key(metric)
    gain = metric_value(candidate, key)
    low = metric_value(candidate, f"{key}_ci_low")
    high = metric_value(candidate, f"{key}_ci_high")
    if gain is None or low is None or high is None:
        return False, (
            f"no paired-bootstrap interval of the gain over the base model ({key}_ci_low/_ci_high): its "
            "significance cannot be checked (evaluate with evaluation.evaluate_base, or skip the check)"
        )
    interval = f"{gain:+.4g} [{low:+.4g}, {high:+.4g}] (paired bootstrap, 95 %)"
    if low > 0:
        return True, f"its gain over the base model is significant: {key} = {interval}"
    return (
        False,
        f"its gain over the base model is not significant: {key} = {interval}, the interval reaches 0",
    )


def decide_promotion(
    candidate: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    base: Mapping[str, Any] | None,
    *,
    metric: str = DEFAULT_METRIC,
    margin: float = 0.0,
    require_beats_base: bool = True,
    require_significant_gain: bool = True,
) -> PromotionDecision:
    """The promotion gate, as a pure function of metric dicts (keys as in ``evaluation.evaluate_ious``).

    Promote iff all hold:

    1. the candidate has a finite ``metric``;
    2. with ``require_beats_base``: the base model has the metric and ``candidate > base`` (strictly);
    3. with ``require_beats_base`` and ``require_significant_gain``: the candidate carries the paired-bootstrap
       interval of its gain over the base model on the same images (``eval/gain/<name>_ci_low/_ci_high``, from
       ``evaluation.paired_gain``) and its lower bound is > 0, so a gain that could be noise is not promoted;
    4. there is no champion, or the champion has the metric and ``candidate - champion > margin`` (strictly, so a
       tie never replaces the champion; ``margin`` is in the metric's units, e.g. percentage points for A@0.5).

    A champion without the metric is not comparable: the candidate is refused (re-evaluate or force).
    """
    if margin < 0 or math.isnan(margin):
        raise ValueError(f"margin must be >= 0, got {margin}")
    reasons: list[str] = []
    cand = metric_value(candidate, metric)
    if cand is None:
        raw = (candidate or {}).get(metric)
        what = f"a non-finite value ({raw})" if raw is not None else "no value"
        return PromotionDecision(False, [f"candidate has {what} for {metric}"])
    if require_beats_base:
        base_value = metric_value(base, metric)
        if base_value is None:
            return PromotionDecision(
                False, [f"base model has no value for {metric}; cannot check that the candidate beats it"]
            )
        if not cand > base_value:
            return PromotionDecision(
                False, [f"candidate {metric}={cand:.4g} does not beat the base model ({base_value:.4g})"]
            )
        reasons.append(f"candidate {metric}={cand:.4g} beats the base model ({base_value:.4g})")
        if require_significant_gain:
            significant, why = _gain_is_significant(candidate, metric)
            if not significant:
                return PromotionDecision(False, [*reasons, why])
            reasons.append(why)
    if champion is None:
        reasons.append("there is no current champion")
        return PromotionDecision(True, reasons)
    champ = metric_value(champion, metric)
    if champ is None:
        reasons.append(f"the current champion has no value for {metric}; not comparable")
        return PromotionDecision(False, reasons)
    gain = cand - champ
    if gain > margin:
        reasons.append(
            f"candidate {metric}={cand:.4g} beats the champion ({champ:.4g}) by {gain:.4g} > margin {margin:g}"
        )
        return PromotionDecision(True, reasons)
    reasons.append(
        f"candidate {metric}={cand:.4g} does not beat the champion ({champ:.4g}) by more than margin {margin:g} "
        f"(difference {gain:.4g})"
    )
    return PromotionDecision(False, reasons)


def decision_json(decision: PromotionDecision) -> str:
    """The decision as one JSON line (for the CLI and step outputs)."""
    return json.dumps({"promote": decision.promote, "reasons": decision.reasons})
