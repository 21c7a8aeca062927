"""The closing summary of a run: the lines a person reads at the end of the log."""

from __future__ import annotations

from medloc_core.run_summary import summary_lines, tau_raises, versus


def _history() -> list[dict]:
    taus = [0.2] * 57 + [0.35] * 191 + [0.5] * 52
    rows = [{"step": i + 1, "curriculum/threshold": t, "curriculum/raised": 0.0} for i, t in enumerate(taus)]
    rows[56]["curriculum/raised"] = rows[247]["curriculum/raised"] = 1.0
    return rows


def test_tau_raises_reads_old_and_new_tau_from_the_trace():
    assert tau_raises(_history()) == [[57, 0.2, 0.35], [248, 0.35, 0.5]]
    assert tau_raises([{"step": 1, "curriculum/raised": 0.0}]) == []  # raw IoU: no threshold at all


def test_versus_shows_the_model_the_base_and_the_paired_gain_with_intervals():
    metrics = {"eval/A@0.5": 63.125, "eval/A@0.5_ci_low": 57.8, "eval/A@0.5_ci_high": 68.4}
    metrics |= {"eval/gain/A@0.5": 20.94, "eval/gain/A@0.5_ci_low": 14.38, "eval/gain/A@0.5_ci_high": 27.81}
    base = {"eval/A@0.5": 42.19, "eval/A@0.5_ci_low": 36.6, "eval/A@0.5_ci_high": 47.5}
    assert (
        versus(metrics, base, "A@0.5") == "A@0.5 63.1 [57.8, 68.4] vs 42.2 [36.6, 47.5]: +20.9 [+14.4, +27.8]"
    )
    assert versus({"eval/A@0.5": 63.125}, {}, "A@0.5") == "A@0.5 63.1"


def test_summary_has_the_handover_the_tau_path_the_metrics_the_decision_and_the_links():
    training = {
        "steps": 300,
        "seconds_per_step": 0.47,
        "final_threshold": 0.5,
        "tau_raises": tau_raises(_history()),
        "schedule": "medloc",
        "sft": {
            "steps": 500,
            "max_steps": 800,
            "stopped_early": True,
            "stop_hit_rate": 0.4,
            "stop_iou": 0.5,
            "val_checks": [[475, 0.35], [500, 0.425]],
        },
    }
    metrics = {"eval/A@0.5": 63.1, "eval/gain/A@0.5": 20.9, "eval/mIoU": 0.518}
    promotion = {
        "registered": True,
        "version": 3,
        "promoted": False,
        "reasons": ["its gain is not significant"],
    }
    lines = summary_lines(
        training, metrics, {"eval/A@0.5": 42.2}, promotion, model_name="m", links=["MLflow run x"]
    )
    text = "\n".join(lines)
    assert "handed over at step 500 of 800 (val hit rate at IoU ≥ 0.5 = 0.425 ≥ 0.4)" in text
    assert "τ 0.20 → 0.35 (after step 57) → 0.50 (after step 248)" in text
    assert "  A@0.5 63.1 vs 42.2: +20.9" in lines and "  mIoU 0.518" in lines
    assert "m version 3 is challenger (not promoted): its gain is not significant" in text
    assert lines[-1] == "MLflow run x"
    never = summary_lines(
        {**training, "tau_raises": [], "final_threshold": 0.2, "sft": None},
        {},
        {},
        {"registered": False, "reasons": ["every group was dead"]},
        model_name="m",
    )
    assert "τ stayed at 0.20 (never raised)" in never[2] and "SFT warm-up: none" in never[1]
    assert never[-1] == "Registry: not registered (every group was dead)"
