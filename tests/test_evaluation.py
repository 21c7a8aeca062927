"""Metrics (E11) on hand-made IoU lists with exact values; bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medloc_core.evaluation.metrics import (
    PSEUDO_MAP_THRESHOLDS,
    accuracy_at,
    bootstrap_ci,
    evaluate_ious,
    mean_iou,
    metrics_table,
    mlflow_key,
    mlflow_metrics,
    pseudo_map,
)
from medloc_core.evaluation.runner import eval_set_hash, log_prediction_grid


def test_thresholds_are_the_ten_coco_steps():
    assert PSEUDO_MAP_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_accuracy_at_counts_equal_as_hit():
    ious = [0.0, 0.49, 0.5, 0.79, 0.8, 1.0]
    assert accuracy_at(ious, 0.5) == pytest.approx(100 * 4 / 6)
    assert accuracy_at(ious, 0.8) == pytest.approx(100 * 2 / 6)
    assert accuracy_at([0.5], 0.5) == 100.0  # '>=' (A8), not '>'
    assert accuracy_at([], 0.5) != accuracy_at([], 0.5)  # NaN for an empty set


def test_pseudo_map_exact():
    # 0.62 clears 0.50, 0.55, 0.60 -> 3/10; 0.95 clears all 10; 0.3 none; 0.75 clears 6 (0.50..0.75)
    ious = [0.62, 0.95, 0.3, 0.75]
    assert pseudo_map(ious) == pytest.approx(100 * (3 + 10 + 0 + 6) / 40)
    assert pseudo_map(ious) == pytest.approx(np.mean([accuracy_at(ious, t) for t in PSEUDO_MAP_THRESHOLDS]))


def test_mean_iou_and_validation():
    assert mean_iou([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="index 1"):
        accuracy_at([0.2, 1.5], 0.5)
    with pytest.raises(ValueError, match="index 0"):
        mean_iou([float("nan")])


def test_evaluate_ious_overall_and_per_dataset():
    ious = [0.9, 0.6, 0.0, 0.85, 0.2, 0.0]
    datasets = ["ham", "ham", "ham", "tn3k", "tn3k", "tn3k"]
    failed = [False, False, True, False, False, True]
    m = evaluate_ious(ious, datasets, failed, n_boot=200, seed=1)
    assert m["eval/A@0.5"] == pytest.approx(50.0)
    assert m["eval/A@0.8"] == pytest.approx(100 * 2 / 6)
    assert m["eval/mIoU"] == pytest.approx(2.55 / 6)
    assert m["eval/parse_failure_rate"] == pytest.approx(2 / 6)
    assert m["eval/n"] == 6
    # pseudo-mAP: 0.9 -> 9 thresholds, 0.6 -> 3, 0.85 -> 8
    assert m["eval/pseudo_mAP"] == pytest.approx(100 * (9 + 3 + 8) / 60)
    assert m["eval/ham/A@0.5"] == pytest.approx(100 * 2 / 3)
    assert m["eval/ham/A@0.8"] == pytest.approx(100 / 3)
    assert m["eval/tn3k/A@0.5"] == pytest.approx(100 / 3)
    assert m["eval/tn3k/mIoU"] == pytest.approx(1.05 / 3)
    assert m["eval/tn3k/parse_failure_rate"] == pytest.approx(1 / 3)
    for key in ("eval/A@0.5", "eval/A@0.8", "eval/pseudo_mAP", "eval/mIoU", "eval/ham/A@0.5"):
        assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"], key
    assert "eval/parse_failure_rate_ci_low" not in m


def test_evaluate_ious_rejects_inconsistent_input():
    with pytest.raises(ValueError, match="parse failure must have IoU 0"):
        evaluate_ious([0.5], ["a"], [True])
    with pytest.raises(ValueError, match="datasets has 1 entries for 2"):
        evaluate_ious([0.5, 0.1], ["a"])
    with pytest.raises(ValueError, match="cannot be used in a metric key"):
        evaluate_ious([0.5], ["a/b"])


def test_bootstrap_ci_deterministic_and_contains_point():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, size=200)
    lo1, hi1 = bootstrap_ci(values, mean_iou, n_boot=500, seed=7)
    lo2, hi2 = bootstrap_ci(values, mean_iou, n_boot=500, seed=7)
    lo3, hi3 = bootstrap_ci(values, mean_iou, n_boot=500, seed=8)
    assert (lo1, hi1) == (lo2, hi2)
    assert (lo1, hi1) != (lo3, hi3)
    assert lo1 < values.mean() < hi1
    # the standard error of a U(0,1) mean over 200 samples is ~0.0204 -> 95% width ~0.08
    assert 0.05 < hi1 - lo1 < 0.11
    assert bootstrap_ci([0.7, 0.7, 0.7], mean_iou, n_boot=50) == pytest.approx((0.7, 0.7))
    assert all(math.isnan(v) for v in bootstrap_ci([], mean_iou))


def test_mlflow_keys_are_accepted_by_mlflow():
    from mlflow.utils.validation import _validate_metric_name

    assert mlflow_key("eval/A@0.5") == "eval/A_at_0.5"
    assert mlflow_key("eval/ham/A@0.8_ci_low") == "eval/ham/A_at_0.8_ci_low"
    safe = mlflow_metrics(evaluate_ious([0.9, 0.1], ["ham", "isic"], n_boot=10))
    for key in safe:
        _validate_metric_name(key)
    assert safe["eval/A_at_0.5"] == 50.0
    assert "eval/pseudo_mAP" in safe
    assert mlflow_metrics({"a": float("nan"), "b": 1.0}) == {"b": 1.0}


def test_metrics_table_lists_models_and_groups():
    base = evaluate_ious([0.1, 0.6], ["ham", "isic"], n_boot=0)
    trained = evaluate_ious([0.9, 0.8], ["ham", "isic"], n_boot=0)
    table = metrics_table({"base": base, "trained": trained})
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["model", "group", "A@0.5", "%"]
    assert len(lines) == 1 + 2 * 3
    assert lines[1].split()[:3] == ["base", "all", "50.00"]
    assert lines[4].split()[:3] == ["trained", "all", "100.00"]


def test_eval_set_hash_depends_on_test_rows_only():
    df = pd.DataFrame(
        {
            "record_id": ["a", "b", "c"],
            "dataset": ["d"] * 3,
            "x1": [0.0, 1, 2],
            "y1": [0.0, 1, 2],
            "x2": [5.0, 6, 7],
            "y2": [5.0, 6, 7],
            "split": ["test", "test", "train"],
        }
    )
    h = eval_set_hash(df)
    assert len(h) == 16
    changed_train = df.copy()
    changed_train.loc[2, "x2"] = 99.0
    assert eval_set_hash(changed_train) == h
    changed_test = df.copy()
    changed_test.loc[0, "x2"] = 99.0
    assert eval_set_hash(changed_test) != h
    assert eval_set_hash(df.iloc[::-1]) == h


def test_log_prediction_grid_writes_png(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 48), (0, 0, 0)).save(tmp_path / "a.png")
    prepared = pd.DataFrame(
        {
            "record_id": ["a"],
            "image_path": [str(tmp_path / "a.png")],
            "x1": [1.0],
            "y1": [1.0],
            "x2": [9.0],
            "y2": [9.0],
        }
    )
    preds = pd.DataFrame(
        {
            "record_id": ["a"],
            "dataset": ["d"],
            "pred_x1": [2.0],
            "pred_y1": [2.0],
            "pred_x2": [8.0],
            "pred_y2": [8.0],
        }
    ).assign(iou=0.56)
    out = log_prediction_grid(prepared, preds, tmp_path / "plots" / "grid.png")
    assert out == tmp_path / "plots" / "grid.png"
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_paired_gain_is_per_image_and_has_a_paired_interval() -> None:
    import pandas as pd

    from medloc_core.evaluation.metrics import paired_gain

    ids = [f"r{i}" for i in range(10)]
    base = pd.DataFrame({"record_id": ids, "iou": [0.2] * 10})
    model = pd.DataFrame({"record_id": ids[::-1], "iou": [0.6] * 3 + [0.9] * 2 + [0.1] * 5})  # other order
    gain = paired_gain(model, base, n_boot=200)
    assert gain["eval/gain/A@0.5"] == pytest.approx(50.0)
    assert gain["eval/gain/A@0.8"] == pytest.approx(20.0)
    assert gain["eval/gain/mIoU"] == pytest.approx((0.4 * 3 + 0.7 * 2 - 0.1 * 5) / 10)
    assert gain["eval/gain/A@0.5_ci_low"] < 50.0 < gain["eval/gain/A@0.5_ci_high"] <= 100.0
    with pytest.raises(ValueError, match="different images"):
        paired_gain(model.iloc[:5], base)
