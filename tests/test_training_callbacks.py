"""The per-step callback's dead-group split: all-hit vs all-miss groups at the threshold that scored the step."""

from __future__ import annotations


def test_dead_groups_split_into_all_hit_and_all_miss_at_the_step_threshold() -> None:
    from medloc_core.curriculum import make_schedule
    from medloc_core.training.callbacks import dead_group_split

    ious = [0.6, 0.7, 0.1, 0.0, 0.6, 0.1, 0.5, 0.5]  # groups of 2: all hit, all miss, live, all hit (>=)
    fixed = make_schedule("fixed", tau=0.5)
    assert dead_group_split(ious, [None] * 8, 2, fixed, {}, 0.5) == {
        "train/dead_all_hit": 0.5,
        "train/dead_all_miss": 0.25,
    }
    raw = make_schedule("raw_iou")  # no τ: only groups of zero IoU are dead (all miss)
    assert dead_group_split([0.0, 0.0, 0.3, 0.0], [None] * 4, 2, raw, {}, None) == {
        "train/dead_all_hit": 0.0,
        "train/dead_all_miss": 0.5,
    }

    class PerDataset:
        per_dataset = True

    split = dead_group_split(
        [0.4, 0.45, 0.4, 0.45], ["a", "a", "b", "b"], 2, PerDataset(), {"a": 0.3, "b": 0.5}, 0.4
    )
    assert split == {"train/dead_all_hit": 0.5, "train/dead_all_miss": 0.5}  # each group at its dataset's τ


def _steps_of_good_boxes(schedule, steps: int, caplog) -> tuple[object, list[str]]:
    """Run the curriculum callback for ``steps`` steps of IoU 0.9 (4 completions, groups of 2); returns the
    callback and its "τ raised" log lines."""
    import logging
    from types import SimpleNamespace

    from medloc_core.training.callbacks import CurriculumCallback

    record = SimpleNamespace(ious=[0.9] * 4, datasets=["d"] * 4, parse_failures=0, completions=4, texts=[])
    tracker = SimpleNamespace(pop_step=lambda: record)
    callback = CurriculumCallback(
        schedule, tracker, num_generations=2, metrics_sink=None, history_path=None, reward_names=[]
    )
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    control = SimpleNamespace(should_log=False)
    with caplog.at_level(logging.INFO, logger="medloc_core.training.callbacks"):
        for step in range(1, steps + 1):
            state.global_step = step
            callback.on_step_end(None, state, control)
    return callback, [r.getMessage() for r in caplog.records if r.getMessage().startswith("τ raised")]


def test_each_raise_is_one_log_line_with_the_window_that_decided_it(caplog) -> None:
    from medloc_core.curriculum import make_schedule

    schedule = make_schedule("medloc", tau0=0.2, window=2)
    _, raises = _steps_of_good_boxes(schedule, 2, caplog)
    assert len(raises) == 1 == int(schedule.stats["num_raises"]), raises
    assert raises[0].startswith(
        f"τ raised 0.20 → {schedule.threshold:.2f} after step 2: window hit rate 1.00"
    )


def test_medloc_spread_raises_are_traced_per_step_but_not_logged_one_line_each(caplog) -> None:
    from medloc_core.curriculum import make_schedule
    from medloc_core.run_summary import tau_line, tau_raises

    schedule = make_schedule("medloc_spread", tau0=0.2, window=1)
    callback, raises = _steps_of_good_boxes(schedule, 10, caplog)
    assert not raises
    rows = callback.history
    assert [r["curriculum/raised"] for r in rows] == [1.0] * 10  # +0.05 a step, towards the window's 0.9
    assert rows[-1]["curriculum/iou_quantile"] == 0.9 and schedule.threshold == 0.7
    training = {"steps": 10, "final_threshold": schedule.threshold, "tau_raises": tau_raises(rows)}
    assert tau_line(training).endswith("τ 0.20 → 0.70 in 10 raises (after steps 1–10)")
