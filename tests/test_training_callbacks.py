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
