"""Training and evaluation figures (matplotlib, Agg backend, PNG).

``history`` is the per-step list of metric dicts that training produces (``TrainingResult.history``), with
the keys of ``docs/architecture.md``: ``step``, ``curriculum/threshold``, ``curriculum/hit_rate``,
``curriculum/raised``, ``train/reward``, ``train/frac_reward_zero_std``, ``train/rewards/<func>/mean``, …
A step without a key is skipped for that curve. Steps come from ``history[i]["step"]`` when present,
else ``i + 1``.

Every ``plot_*`` returns a matplotlib Figure; pass ``path=`` to also write it as a PNG (the figure is then
closed and the returned Figure must not be drawn again). Boxes in :func:`plot_prediction_grid` are
``(x1, y1, x2, y2)`` in the pixels of the image they are drawn on: ground truth green, prediction red.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from medloc_core.images import load_rgb

GT_COLOR = "#00c000"  # green
PRED_COLOR = "#ff0000"  # red
DPI = 100

_REWARD_FUNC = re.compile(r"^train/rewards/(.+)/mean$")


def _steps_and_values(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    steps, values = [], []
    for i, entry in enumerate(history):
        value = entry.get(key)
        if value is None:
            continue
        value = float(value)
        if math.isnan(value):
            continue
        steps.append(float(entry.get("step", i + 1)))
        values.append(value)
    return np.asarray(steps), np.asarray(values)


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=DPI)
        plt.close(fig)
    return fig


def _empty_note(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} recorded", ha="center", va="center", transform=ax.transAxes)


def plot_rewards(history: Sequence[Mapping[str, Any]], path: str | Path | None = None) -> Figure:
    """Total reward (``train/reward``) and each reward function's mean (``train/rewards/<func>/mean``) per step."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=DPI)
    keys = ["train/reward"] + sorted({k for e in history for k in e if _REWARD_FUNC.match(k)})
    drawn = 0
    for key in keys:
        steps, values = _steps_and_values(history, key)
        if steps.size == 0:
            continue
        label = "total" if key == "train/reward" else _REWARD_FUNC.match(key).group(1)  # type: ignore[union-attr]
        ax.plot(
            steps,
            values,
            marker="." if steps.size < 50 else None,
            label=label,
            lw=2 if label == "total" else 1,
        )
        drawn += 1
    if drawn:
        ax.legend(loc="best", fontsize="small")
    else:
        _empty_note(ax, "reward")
    ax.set_xlabel("training step")
    ax.set_ylabel("mean reward per completion")
    ax.set_title("Rewards")
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def plot_curriculum(history: Sequence[Mapping[str, Any]], path: str | Path | None = None) -> Figure:
    """IoU threshold τ (``curriculum/threshold``) and window hit rate (``curriculum/hit_rate``) per step, with
    the readiness bars the rule compares them against: P(τ) (``curriculum/required_hit_rate``, the minimum
    window hit rate) and S(τ) (``curriculum/max_reward_std``, the maximum window std, drawn with the window std
    ``curriculum/reward_std``).

    Steps where τ was raised (``curriculum/raised`` true) are marked with dashed vertical lines.
    """
    fig, ax = plt.subplots(figsize=(7, 4), dpi=DPI)
    steps, tau = _steps_and_values(history, "curriculum/threshold")
    hsteps, hit = _steps_and_values(history, "curriculum/hit_rate")
    rsteps, raised = _steps_and_values(history, "curriculum/raised")
    psteps, pbar = _steps_and_values(history, "curriculum/required_hit_rate")
    ssteps, sbar = _steps_and_values(history, "curriculum/max_reward_std")
    dsteps, std = _steps_and_values(history, "curriculum/reward_std")
    if steps.size:
        ax.step(steps, tau, where="post", color="tab:blue", lw=2, label="threshold τ")
    if hsteps.size:
        ax.plot(hsteps, hit, color="tab:orange", lw=1, label="window hit rate")
    if psteps.size:
        ax.step(psteps, pbar, where="post", color="tab:orange", ls=":", lw=1.5, label="P(τ): min hit rate")
    if dsteps.size and ssteps.size:
        ax.plot(dsteps, std, color="tab:green", lw=0.8, alpha=0.8, label="window std")
    if ssteps.size:
        ax.step(ssteps, sbar, where="post", color="tab:green", ls=":", lw=1.5, label="S(τ): max std")
    for i, step in enumerate(rsteps[raised > 0.5]):
        ax.axvline(step, color="tab:red", ls="--", lw=1, label="τ raised" if i == 0 else None)
    if steps.size or hsteps.size:
        ax.legend(loc="best", fontsize="small")
    else:
        _empty_note(ax, "curriculum")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("IoU threshold / hit rate")
    ax.set_title("Performance-aware IoU curriculum")
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def plot_dead_groups(history: Sequence[Mapping[str, Any]], path: str | Path | None = None) -> Figure:
    """Fraction of GRPO groups whose rewards all tie (``train/frac_reward_zero_std``): no advantage, no gradient;
    with the accuracy reward's split into all-hit and all-miss groups (``train/dead_all_hit``/``_all_miss``)."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=DPI)
    steps, values = _steps_and_values(history, "train/frac_reward_zero_std")
    if steps.size:
        marker = "." if steps.size < 50 else None
        ax.plot(steps, values, color="tab:purple", marker=marker, label="all rewards tied (TRL)")
        # why they are dead: every completion a hit at this τ (too easy) or none (too hard)
        for key, color, label in (
            ("train/dead_all_hit", "tab:green", "accuracy all hit"),
            ("train/dead_all_miss", "tab:red", "accuracy all miss"),
        ):
            split_steps, split = _steps_and_values(history, key)
            if split_steps.size:
                ax.plot(split_steps, split, color=color, lw=1.0, alpha=0.8, label=label)
        ax.legend(loc="upper right", fontsize=8)
    else:
        _empty_note(ax, "train/frac_reward_zero_std")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("fraction of zero-std groups")
    ax.set_title("Dead groups (vanishing advantages)")
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def _draw_box(ax: Any, box: Sequence[float], color: str, lw: float) -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=lw))


def plot_prediction_grid(
    images: Sequence[Any],
    gt_boxes: Sequence[Sequence[float] | None],
    pred_boxes: Sequence[Sequence[float] | None],
    titles: Sequence[str] | None = None,
    path: str | Path | None = None,
    *,
    ncols: int = 4,
    cell_inches: float = 3.0,
    linewidth: float = 2.0,
) -> Figure:
    """A grid of images with the ground-truth box (green) and the predicted box (red, absent if None).

    ``images``: PIL images or ``(H, W[, C])`` arrays. Boxes are ``(x1, y1, x2, y2)`` pixels of each image.
    """
    n = len(images)
    if not (len(gt_boxes) == len(pred_boxes) == n) or (titles is not None and len(titles) != n):
        raise ValueError(
            f"plot_prediction_grid needs one gt box, pred box (and title) per image: {n} images, "
            f"{len(gt_boxes)} gt, {len(pred_boxes)} pred, {None if titles is None else len(titles)} titles"
        )
    if n == 0:
        raise ValueError("plot_prediction_grid needs at least one image")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(cell_inches * ncols, cell_inches * nrows), dpi=DPI, squeeze=False
    )
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img = np.asarray(images[k])
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        if gt_boxes[k] is not None:
            _draw_box(ax, gt_boxes[k], GT_COLOR, linewidth)
        if pred_boxes[k] is not None:
            _draw_box(ax, pred_boxes[k], PRED_COLOR, linewidth)
        if titles is not None:
            ax.set_title(titles[k], fontsize=8)
    fig.suptitle("ground truth (green) vs prediction (red)", fontsize=9)
    return _finish(fig, path)


def draw_box_on_image(
    image: Any, box: Sequence[float] | None, *, color: tuple[int, int, int] = (255, 0, 0), width: int = 3
) -> Any:
    """A copy of a PIL image with ``box`` (original pixels) drawn as a rectangle outline (used by ``medloc predict``)."""
    from PIL import ImageDraw

    out = image.convert("RGB").copy()
    if box is not None:
        x1, y1, x2, y2 = (float(v) for v in box)
        ImageDraw.Draw(out).rectangle([x1, y1, x2, y2], outline=color, width=width)
    return out


def plot_predictions_from_frames(
    prepared_df: Any,
    predictions: Any,
    path: str | Path | None = None,
    *,
    max_images: int = 8,
    ncols: int = 4,
) -> Figure:
    """:func:`plot_prediction_grid` for the first ``max_images`` rows of ``evaluation.evaluate_model``'s output.

    ``prepared_df`` supplies ``image_path`` and the ground truth ``x1..y2``; ``predictions`` supplies
    ``pred_x1..pred_y2`` (NaN = unparsed, drawn as no box) and ``iou``; both in original-image pixels, joined on
    ``record_id``. Titles show the dataset and the IoU.
    """

    if len(predictions) == 0:
        raise ValueError("plot_predictions_from_frames: no predictions")
    truth = prepared_df.drop_duplicates("record_id").set_index("record_id")
    images, gts, preds, titles = [], [], [], []
    for _, row in predictions.head(max_images).iterrows():
        if row["record_id"] not in truth.index:
            raise ValueError(f"prediction for record_id={row['record_id']!r} has no row in the prepared data")
        rec = truth.loc[row["record_id"]]
        images.append(load_rgb(rec["image_path"]))
        gts.append(tuple(float(rec[c]) for c in ("x1", "y1", "x2", "y2")))
        pred = tuple(float(row[c]) for c in ("pred_x1", "pred_y1", "pred_x2", "pred_y2"))
        preds.append(None if any(math.isnan(v) for v in pred) else pred)
        titles.append(f"{row['dataset']} IoU={float(row['iou']):.2f}")
    return plot_prediction_grid(images, gts, preds, titles, path=path, ncols=ncols)
