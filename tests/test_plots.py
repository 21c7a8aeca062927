"""Plots are valid PNGs of the expected size, and boxes are drawn in their colours where expected."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medloc_core import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(n: int = 12) -> list[dict]:
    out = []
    tau = 0.5
    for step in range(1, n + 1):
        raised = step in (4, 9)
        if raised:
            tau += 0.05
        out.append(
            {
                "step": step,
                "curriculum/threshold": tau,
                "curriculum/hit_rate": 0.3 + 0.05 * step,
                "curriculum/raised": float(raised),
                "train/reward": 0.5 + 0.1 * step,
                "train/rewards/format_reward/mean": 0.9,
                "train/rewards/iou_reward/mean": 0.1 * step,
                "train/frac_reward_zero_std": 1.0 / step,
            }
        )
    return out


def _read_png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("fn", [plots.plot_rewards, plots.plot_curriculum, plots.plot_dead_groups])
def test_history_plots_write_png(tmp_path, fn):
    path = tmp_path / f"{fn.__name__}.png"
    fig = fn(_history(), path=path)
    arr = _read_png(path)
    assert arr.shape == (400, 700, 3)  # figsize 7x4 in at 100 dpi
    assert fig.axes[0].get_xlabel() == "training step"
    assert arr.std() > 10  # not blank


def test_rewards_plot_has_one_line_per_function():
    fig = plots.plot_rewards(_history())
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["total", "format_reward", "iou_reward"]


def test_curriculum_plot_marks_raise_events():
    fig = plots.plot_curriculum(_history())
    ax = fig.axes[0]
    vlines = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert sorted(float(line.get_xdata()[0]) for line in vlines) == [4.0, 9.0]
    tau_line = ax.get_lines()[0]
    assert tau_line.get_label() == "threshold τ"
    assert float(tau_line.get_ydata()[-1]) == pytest.approx(0.6)


def test_plots_tolerate_missing_keys(tmp_path):
    history = [{"step": 1, "train/reward": 0.2}, {"step": 2}]
    for fn in (plots.plot_rewards, plots.plot_curriculum, plots.plot_dead_groups):
        path = tmp_path / f"{fn.__name__}.png"
        fn(history, path=path)
        _read_png(path)


def _near(arr: np.ndarray, color: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return np.all(np.abs(arr.astype(int) - np.array(color)) <= tol, axis=-1)


def test_prediction_grid_draws_gt_green_and_pred_red(tmp_path):
    # a dark 200x200 image; GT box on the left half, prediction on the right half
    img = Image.fromarray(np.full((200, 200), 40, dtype=np.uint8))
    gt = (10.0, 10.0, 90.0, 190.0)
    pred = (110.0, 10.0, 190.0, 190.0)
    path = tmp_path / "grid.png"
    plots.plot_prediction_grid(
        [img], [gt], [pred], ["case 1"], path=path, ncols=1, cell_inches=4.0, linewidth=3
    )
    arr = _read_png(path)
    assert arr.shape == (400, 400, 3)
    green = _near(arr, (0, 192, 0))
    red = _near(arr, (255, 0, 0))
    assert green.sum() > 100 and red.sum() > 100
    gx = np.flatnonzero(green.any(axis=0))
    rx = np.flatnonzero(red.any(axis=0))
    # the image is drawn centred with aspect 1; green lies left of red with no overlap
    assert gx.max() < rx.min()
    assert gx.mean() < 200 < rx.mean()


def test_prediction_grid_without_prediction_and_several_cells(tmp_path):
    imgs = [np.zeros((50, 80, 3), dtype=np.uint8) for _ in range(5)]
    path = tmp_path / "grid5.png"
    fig = plots.plot_prediction_grid(
        imgs, [(5, 5, 20, 20)] * 5, [None, (1, 1, 3, 3), None, None, None], path=path
    )
    arr = _read_png(path)
    assert arr.shape == (600, 1200, 3)  # 4 columns x 2 rows of 3 in at 100 dpi
    assert len(fig.axes) == 8
    red = _near(arr, (255, 0, 0), tol=30)
    rows, cols = np.nonzero(red)
    assert rows.size > 0  # only the 2nd cell (row 0, columns 300..600) has a red box
    assert rows.max() < 300 and 300 <= cols.min() and cols.max() < 600


def test_prediction_grid_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one gt box"):
        plots.plot_prediction_grid([np.zeros((4, 4))], [], [None])


def test_draw_box_on_image():
    img = Image.new("RGB", (100, 60), (0, 0, 0))
    out = np.asarray(plots.draw_box_on_image(img, (10, 10, 50, 40), width=2))
    assert tuple(out[10, 30]) == (255, 0, 0)  # top edge
    assert tuple(out[25, 30]) == (0, 0, 0)  # inside stays
    assert tuple(np.asarray(img)[10, 30]) == (0, 0, 0)  # original untouched


def test_prediction_grid_from_evaluation_frames(tmp_path):
    import pandas as pd

    paths = []
    for i in range(3):
        p = tmp_path / f"i{i}.png"
        Image.new("RGB", (100, 100), (30, 30, 30)).save(p)
        paths.append(str(p))
    prepared = pd.DataFrame(
        {"record_id": ["a", "b", "c"], "image_path": paths, "x1": 10.0, "y1": 10.0, "x2": 40.0, "y2": 40.0}
    )
    nan = float("nan")
    preds = pd.DataFrame(
        {
            "record_id": ["a", "b", "c"],
            "dataset": ["d1", "d1", "d2"],
            "pred_x1": [50.0, nan, 12.0],
            "pred_y1": [50.0, nan, 12.0],
            "pred_x2": [90.0, nan, 40.0],
            "pred_y2": [90.0, nan, 40.0],
            "iou": [0.0, 0.0, 0.87],
        }
    )
    path = tmp_path / "grid.png"
    fig = plots.plot_predictions_from_frames(prepared, preds, path=path, ncols=3)
    arr = _read_png(path)
    assert arr.shape == (300, 900, 3)
    assert [ax.get_title() for ax in fig.axes] == ["d1 IoU=0.00", "d1 IoU=0.00", "d2 IoU=0.87"]
    red_cols = np.flatnonzero(_near(arr, (255, 0, 0), tol=30).any(axis=0))
    assert red_cols.size and not ((red_cols >= 300) & (red_cols < 600)).any()  # cell b: unparsed, no red box
    with pytest.raises(ValueError, match="record_id='zz'"):
        plots.plot_predictions_from_frames(prepared, preds.assign(record_id=["zz", "b", "c"]))
