"""Grounding metrics with bootstrap confidence intervals (running a model on a split: ``runner.py``).

Metrics (``docs/method.md`` §9), one predicted box per test query:

* ``A@τ`` = 100 · mean(IoU ≥ τ), in **percent** like the paper. ``≥`` is used, as in training (assumption A8;
  VLM-R1's evaluation uses ``>``, which differs only for IoUs exactly equal to τ).
* ``pseudo-mAP`` = mean of A@τ over τ ∈ {0.50, 0.55, …, 0.95} (10 thresholds), in percent. There are no
  confidence scores, so this is not COCO AP.
* ``mIoU`` = mean IoU, in [0, 1].
* ``parse_failure_rate`` = fraction of answers with no parseable box, in [0, 1]. An unparseable answer
  counts as IoU 0 (a miss) in every other metric.

Metric keys follow ``docs/architecture.md``: ``eval/A@0.5``, ``eval/A@0.8``, ``eval/pseudo_mAP``, ``eval/mIoU``,
``eval/parse_failure_rate`` and per dataset ``eval/<dataset>/A@0.5`` …; 95 % bootstrap intervals as
``<key>_ci_low`` / ``<key>_ci_high``. MLflow rejects ``@`` in metric and tag names, so log them through
:func:`mlflow_metrics`, which maps ``@`` to ``_at_`` (``eval/A@0.5`` → ``eval/A_at_0.5``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

PSEUDO_MAP_THRESHOLDS: tuple[float, ...] = tuple(round(0.50 + 0.05 * i, 2) for i in range(10))
HEADLINE_THRESHOLDS: tuple[float, ...] = (0.5, 0.8)
CI_LEVEL = 0.95
DEFAULT_N_BOOT = 1000
PREFIX = "eval"

_INVALID_MLFLOW_CHARS = re.compile(r"[^/\w.\- :]")


# ----------------------------------------------------------------------------------------------- metrics


def _as_ious(ious: Any) -> np.ndarray:
    arr = np.asarray(ious, dtype=np.float64).reshape(-1)
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0):
        bad = int(np.flatnonzero(~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0))[0])
        raise ValueError(f"IoUs must be finite values in [0, 1]; index {bad} is {arr[bad]!r}")
    return arr


def accuracy_at(ious: Any, tau: float) -> float:
    """A@τ in percent: 100 · fraction of IoUs with ``IoU >= tau`` (``>=``: assumption A8). NaN if empty."""
    arr = _as_ious(ious)
    if arr.size == 0:
        return float("nan")
    return float(100.0 * np.mean(arr >= tau))


def _per_image_map(arr: np.ndarray) -> np.ndarray:
    """Per image, the share of τ in ``PSEUDO_MAP_THRESHOLDS`` with IoU >= τ, in percent (its mean is pseudo-mAP)."""
    thresholds = np.asarray(PSEUDO_MAP_THRESHOLDS)
    return 100.0 * np.mean(arr[:, None] >= thresholds[None, :], axis=1)


def pseudo_map(ious: Any) -> float:
    """Mean of A@τ over τ = 0.50, 0.55, …, 0.95, in percent (MedLoc-R1's "mAP"). NaN if empty."""
    arr = _as_ious(ious)
    if arr.size == 0:
        return float("nan")
    return float(np.mean(_per_image_map(arr)))


def mean_iou(ious: Any) -> float:
    """Mean IoU in [0, 1]. NaN if empty."""
    arr = _as_ious(ious)
    return float(arr.mean()) if arr.size else float("nan")


def bootstrap_ci(
    values: Any,
    stat_fn: Callable[[np.ndarray], float],
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = CI_LEVEL,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat_fn`` over ``values`` (``scipy.stats.bootstrap``, resampling the
    values with replacement ``n_boot`` times).

    Deterministic for a given ``seed``. Returns ``(low, high)`` in the units of ``stat_fn``;
    ``(nan, nan)`` for an empty sample, the value itself twice for a single one.
    """
    from scipy.stats import bootstrap

    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if arr.size == 0:
        return (float("nan"), float("nan"))
    if arr.size == 1 or np.all(arr == arr[0]):  # every resample is the sample itself
        value = float(stat_fn(arr))
        return (value, value)
    result = bootstrap(
        (arr,),
        stat_fn,
        n_resamples=n_boot,
        confidence_level=level,
        method="percentile",
        vectorized=False,
        rng=np.random.default_rng(seed),
    )
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def paired_gain(
    model_predictions: pd.DataFrame,
    base_predictions: pd.DataFrame,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> dict[str, float]:
    """The model's gain over the base on the same images, with paired bootstrap 95 % intervals.

    Both frames are :func:`evaluate_model` predictions (``record_id``, ``iou``). Keys ``eval/gain/A@0.5``,
    ``eval/gain/A@0.8`` (percentage points) and ``eval/gain/mIoU`` (IoU units), each with ``_ci_low/_ci_high``
    from resampling the images (the per-image differences), which is tighter than comparing two separate
    intervals.
    """
    joined = model_predictions[["record_id", "iou"]].merge(
        base_predictions[["record_id", "iou"]], on="record_id", suffixes=("", "_base"), validate="one_to_one"
    )
    if len(joined) != len(model_predictions) or len(joined) != len(base_predictions):
        raise ValueError("paired_gain: the two prediction tables cover different images")
    model, base = joined["iou"].to_numpy(float), joined["iou_base"].to_numpy(float)
    out: dict[str, float] = {}
    diffs = {
        f"A@{t:g}": 100.0 * ((model >= t).astype(float) - (base >= t).astype(float))
        for t in HEADLINE_THRESHOLDS
    }
    diffs["pseudo_mAP"] = _per_image_map(model) - _per_image_map(base)
    diffs["mIoU"] = model - base
    for name, diff in diffs.items():
        key = f"{PREFIX}/gain/{name}"
        out[key] = float(np.mean(diff)) if diff.size else float("nan")
        if n_boot > 0:
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = bootstrap_ci(
                diff, np.mean, n_boot=n_boot, seed=seed
            )
    return out


def gate_metric_problem(metric: str, *, needs_gain: bool) -> str | None:
    """Why a promotion gate cannot compare on ``metric`` (None when it can).

    Evaluation produces ``eval/<name>`` and ``eval/<dataset>/<name>`` for the names of :func:`_metric_fns`
    (higher is better for all of them); paired gains over the base model (``eval/gain/<name>``) exist only for
    the overall ones, so a gate that requires a significant gain needs an overall metric.
    """
    names = sorted(_metric_fns())
    parts = metric.split("/")
    if parts[0] != PREFIX or len(parts) not in (2, 3) or parts[-1] not in names or "gain" in parts[1:-1]:
        return f"evaluation does not produce {metric!r}; use {PREFIX}/<name> with name one of {names}"
    if needs_gain and len(parts) == 3:
        return (
            f"{metric!r} has no paired gain over the base model (only {PREFIX}/<name> has); use an overall "
            "metric or set require_significant_gain: false"
        )
    return None


def _metric_fns() -> dict[str, Callable[[np.ndarray], float]]:
    fns: dict[str, Callable[[np.ndarray], float]] = {}
    for tau in HEADLINE_THRESHOLDS:
        fns[f"A@{tau:g}"] = lambda a, t=tau: accuracy_at(a, t)
    fns["pseudo_mAP"] = pseudo_map
    fns["mIoU"] = mean_iou
    return fns


def _group_metrics(
    prefix: str, ious: np.ndarray, failed: np.ndarray, *, n_boot: int, seed: int
) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, fn in _metric_fns().items():
        key = f"{prefix}/{name}"
        out[key] = fn(ious)
        if n_boot > 0:
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = bootstrap_ci(ious, fn, n_boot=n_boot, seed=seed)
    out[f"{prefix}/parse_failure_rate"] = float(failed.mean()) if failed.size else float("nan")
    out[f"{prefix}/n"] = float(ious.size)
    return out


def evaluate_ious(
    ious: Sequence[float] | np.ndarray,
    datasets: Sequence[str] | None = None,
    parse_failed: Sequence[bool] | np.ndarray | None = None,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    prefix: str = PREFIX,
) -> dict[str, float]:
    """All metrics, overall and per dataset, from one IoU per test query.

    ``ious``: IoU of each prediction with its ground truth, in [0, 1]; a parse failure must be passed as 0.
    ``datasets``: the dataset name of each query (per-dataset keys ``eval/<dataset>/...``); None = overall only.
    ``parse_failed``: True where the answer had no parseable box.

    Returns ``eval/A@0.5``, ``eval/A@0.8``, ``eval/pseudo_mAP`` (percent), ``eval/mIoU`` (0-1),
    ``eval/parse_failure_rate`` (0-1), ``eval/n`` (count), the bootstrap bounds ``<key>_ci_low/_ci_high``
    (``n_boot=0`` skips them) and the same under ``eval/<dataset>/``.
    """
    arr = _as_ious(ious)
    n = arr.size
    failed = (
        np.zeros(n, dtype=bool) if parse_failed is None else np.asarray(parse_failed, dtype=bool).reshape(-1)
    )
    if failed.size != n:
        raise ValueError(f"parse_failed has {failed.size} entries for {n} IoUs")
    if np.any(arr[failed] != 0.0):
        bad = int(np.flatnonzero(failed & (arr != 0.0))[0])
        raise ValueError(f"index {bad}: a parse failure must have IoU 0, got {arr[bad]!r}")
    metrics = _group_metrics(prefix, arr, failed, n_boot=n_boot, seed=seed)
    if datasets is not None:
        names = np.asarray([str(d) for d in datasets], dtype=object)
        if names.size != n:
            raise ValueError(f"datasets has {names.size} entries for {n} IoUs")
        for name in sorted(set(names.tolist())):
            if not name or "/" in name:
                raise ValueError(
                    f"dataset name {name!r} cannot be used in a metric key (empty or contains '/')"
                )
            mask = names == name
            metrics.update(
                _group_metrics(f"{prefix}/{name}", arr[mask], failed[mask], n_boot=n_boot, seed=seed)
            )
    return metrics


def mlflow_key(key: str) -> str:
    """A metric key MLflow accepts: ``@`` → ``_at_``, other characters MLflow rejects → ``_``."""
    return _INVALID_MLFLOW_CHARS.sub("_", key.replace("@", "_at_"))


def mlflow_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """``metrics`` with MLflow-safe keys (see :func:`mlflow_key`); NaN values are dropped (MLflow UI)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        value = float(value)
        if math.isnan(value):
            continue
        safe = mlflow_key(key)
        if safe in out:
            raise ValueError(f"metric keys collide after sanitising for MLflow: {key!r} -> {safe!r}")
        out[safe] = value
    return out


def metrics_table(metrics_by_model: Mapping[str, Mapping[str, float]], *, prefix: str = PREFIX) -> str:
    """A plain-text table: one row per (model, group), columns A@0.5 A@0.8 pseudo_mAP mIoU parse_fail n.

    With two or more models the first is the reference and the gain of the others over it is visible row by
    row (the pipeline passes ``{"base": ..., "trained": ...}``).
    """
    columns = ["A@0.5", "A@0.8", "pseudo_mAP", "mIoU", "parse_failure_rate", "n"]
    headers = ["model", "group", "A@0.5 %", "A@0.8 %", "pmAP %", "mIoU", "parse_fail", "n"]
    rows: list[list[str]] = []
    for model, metrics in metrics_by_model.items():
        groups = sorted(
            {
                k[len(prefix) + 1 :].rsplit("/", 1)[0]
                for k in metrics
                if k.count("/") == 2 and k.startswith(prefix)
            }
        )
        for group in ["all", *groups]:
            base = prefix if group == "all" else f"{prefix}/{group}"
            cells = [model, group]
            for col in columns:
                value = metrics.get(f"{base}/{col}")
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    cells.append("-")
                elif col == "n":
                    cells.append(str(int(value)))
                elif col in ("mIoU", "parse_failure_rate"):
                    cells.append(f"{value:.3f}")
                else:
                    low = metrics.get(f"{base}/{col}_ci_low")
                    high = metrics.get(f"{base}/{col}_ci_high")
                    ci = f" [{low:.1f},{high:.1f}]" if low is not None and high is not None else ""
                    cells.append(f"{value:.2f}{ci}")
            rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
