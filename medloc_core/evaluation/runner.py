"""Evaluating a model on a prepared table: greedy predictions on one split, their metrics (``metrics.py``), the
prediction grid, and the evaluation-set hash the promotion gate compares on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medloc_core.boxes import iou
from medloc_core.data.records import SPLITS
from medloc_core.evaluation.metrics import DEFAULT_N_BOOT, evaluate_ious
from medloc_core.images import ImageError, load_rgb
from medloc_core.model.inference import BoxPredictor
from medloc_core.prompts import build_prompt_text

PRED_COLUMNS = ("pred_x1", "pred_y1", "pred_x2", "pred_y2")

logger = logging.getLogger(__name__)


class EvaluationConfig(BaseModel):
    """``evaluation:`` block of a run config (one home for the evaluation defaults). Lengths in tokens;
    ``n_boot`` bootstrap resamples (0 = no intervals)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: str = "test"
    max_new_tokens: int = Field(default=128, ge=1, le=4096)
    batch_size: int = Field(default=8, ge=1)
    n_boot: int = Field(default=1000, ge=0)
    evaluate_base: bool = True

    @field_validator("split")
    @classmethod
    def _known_split(cls, value: str) -> str:
        if value not in SPLITS:
            raise ValueError(f"must be one of {SPLITS}")
        return value


_REQUIRED_COLUMNS = ("record_id", "dataset", "image_path", "x1", "y1", "x2", "y2")


def _prompt_texts(df: pd.DataFrame) -> list[str]:
    if "prompt_text" in df.columns:
        return [str(t) for t in df["prompt_text"]]

    if "query" not in df.columns:
        raise ValueError("prepared data needs a 'prompt_text' or a 'query' column")
    return [build_prompt_text(str(q)) for q in df["query"]]


def evaluate_model(
    model_dir_or_name: str | Path,
    prepared_df: pd.DataFrame,
    split: str | None = "test",
    *,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    limit: int | None = None,
    predictor: Any = None,
    progress: bool | None = None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Greedy-decode one box per query of ``split`` and score it against the ground truth.

    ``prepared_df``: preprocessed records (``record_id, dataset, image_path, x1..y2`` in original pixels, and
    ``prompt_text`` or ``query``; ``split`` when a split is selected). ``split=None`` uses every row.
    ``predictor`` (a :class:`medloc_core.model.inference.BoxPredictor`) can be passed to reuse a loaded model.
    ``progress``: a progress bar (default: when there is more than one batch; the pipeline turns it off).

    Returns ``(metrics, predictions)``; ``predictions`` has ``record_id, dataset, completion, pred_x1..pred_y2``
    (original-image pixels, NaN when unparsed), ``iou`` (0 when unparsed) and ``parsed``.
    """

    missing = [c for c in _REQUIRED_COLUMNS if c not in prepared_df.columns]
    if missing:
        raise ValueError(f"prepared data lacks columns {missing}; it has {list(prepared_df.columns)}")
    df = prepared_df
    if split is not None:
        if "split" not in df.columns:
            raise ValueError(f"split={split!r} requested but the data has no 'split' column")
        df = df[df["split"] == split]
    if limit is not None:
        df = df.head(limit)
    if df.empty:
        raise ValueError(f"no rows to evaluate (split={split!r}, {len(prepared_df)} rows in total)")
    df = df.reset_index(drop=True)

    defaults = EvaluationConfig()  # one home for the evaluation defaults
    max_new_tokens = defaults.max_new_tokens if max_new_tokens is None else max_new_tokens
    batch_size = defaults.batch_size if batch_size is None else batch_size
    if predictor is None:
        predictor = BoxPredictor(model_dir_or_name, device=device, max_new_tokens=max_new_tokens)
    prompts = _prompt_texts(df)
    images = []
    for i, path in enumerate(df["image_path"]):
        try:
            images.append(load_rgb(path))
        except ImageError as exc:
            raise ValueError(
                f"row {i} (record_id={df['record_id'][i]!r}): cannot open image {path!r}: {exc}"
            ) from exc
    outputs = predictor.predict(images, prompts, batch_size=batch_size, progress=progress)

    rows = []
    for i, out in enumerate(outputs):
        gt = tuple(float(df[c][i]) for c in ("x1", "y1", "x2", "y2"))
        pred = out["box_original"]
        parsed = pred is not None
        rows.append(
            {
                "record_id": df["record_id"][i],
                "dataset": df["dataset"][i],
                "completion": out["completion"],
                **{
                    c: (float(v) if parsed else float("nan"))
                    for c, v in zip(PRED_COLUMNS, pred or (0, 0, 0, 0))
                },
                "iou": iou(pred, gt) if parsed else 0.0,
                "parsed": parsed,
            }
        )
    predictions = pd.DataFrame(rows)
    metrics = evaluate_ious(
        predictions["iou"].to_numpy(),
        predictions["dataset"].astype(str).tolist(),
        ~predictions["parsed"].to_numpy(dtype=bool),
        n_boot=n_boot,
        seed=seed,
    )
    logger.info(
        "evaluated %d queries (split=%s): A@0.5=%.2f%% A@0.8=%.2f%% mIoU=%.3f parse failures=%.1f%%",
        len(predictions),
        split,
        metrics["eval/A@0.5"],
        metrics["eval/A@0.8"],
        metrics["eval/mIoU"],
        100 * metrics["eval/parse_failure_rate"],
    )
    return metrics, predictions


def log_prediction_grid(
    prepared_df: pd.DataFrame, predictions: pd.DataFrame, path: str | Path, *, max_images: int = 8
) -> Path:
    """Write the grid of test images with ground-truth (green) and predicted (red) boxes to ``path`` (PNG).

    ``predictions`` is :func:`evaluate_model`'s second output; see ``plots.plot_predictions_from_frames``.
    """
    from medloc_core.plots import plot_predictions_from_frames  # lazy: matplotlib

    plot_predictions_from_frames(prepared_df, predictions, path, max_images=max_images)
    return Path(path)


def eval_set_hash(prepared_df: pd.DataFrame, split: str | None = "test") -> str:
    """A short content hash of the evaluation set (record ids, datasets, boxes): equal hash ⇒ same test set.

    The promotion gate compares versions only when their metrics were computed on the same hash.
    """
    import hashlib

    df = prepared_df if split is None else prepared_df[prepared_df["split"] == split]
    cols = [c for c in ("record_id", "dataset", "x1", "y1", "x2", "y2") if c in df.columns]
    if "record_id" not in cols:
        raise ValueError("eval_set_hash needs a 'record_id' column")
    body = df[cols].sort_values("record_id").to_csv(index=False, float_format="%.3f")
    return hashlib.sha256(body.encode()).hexdigest()[:16]
