"""``medloc_spread`` (docs/curriculum.md): the τ rule against a plain-Python reference, its reward, its dead groups,
and its state across a resume."""

from __future__ import annotations

import json
import math
import random

import pytest

from medloc_core.curriculum import make_schedule, schedule_for
from medloc_core.curriculum.spread import SpreadConfig, SpreadSchedule


def reference_taus(steps: list[list[float]], cfg: SpreadConfig) -> list[float]:
    """docs/curriculum.md §2 written out directly: after each step, once N steps are in the window, τ moves to
    min(τ + max_raise, q, τ_target) when the window's (1 - p*) quantile q (linear interpolation between order
    statistics) is above τ. Returns the τ that scored each step."""
    tau, window, scored = cfg.tau0, [], []
    for ious in steps:
        scored.append(tau)
        window = (window + [ious])[-cfg.window :]
        values = sorted(v for entry in window for v in entry)
        h = (len(values) - 1) * (1.0 - cfg.target_hit_rate)
        lo = math.floor(h)
        q = values[lo] + (h - lo) * (values[min(lo + 1, len(values) - 1)] - values[lo])
        if len(window) == cfg.window and q > tau and tau < cfg.tau_target:
            tau = min(tau + cfg.max_raise, q, cfg.tau_target)
    return scored


def iou_stream(seed: int, steps: int, group: int = 8, groups: int = 4) -> list[list[list[float]]]:
    """A policy that improves: per step, ``groups`` groups of IoUs around a mean rising from 0.1 to 0.9."""
    rng = random.Random(seed)
    out = []
    for t in range(steps):
        mean = 0.1 + 0.8 * t / max(1, steps - 1)
        out.append([[min(1.0, max(0.0, rng.gauss(mean, 0.15))) for _ in range(group)] for _ in range(groups)])
    return out


@pytest.mark.parametrize(
    "cfg",
    [
        SpreadConfig(),
        SpreadConfig(tau0=0.3, tau_target=0.7, window=3, target_hit_rate=0.25, max_raise=0.1),
        SpreadConfig(window=1, target_hit_rate=0.8, max_raise=0.02),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_tau_follows_the_reference_rule(cfg: SpreadConfig, seed: int) -> None:
    stream = iou_stream(seed, 80)
    schedule = SpreadSchedule(cfg)
    scored = []
    for step in stream:
        scored.append(schedule.threshold)
        schedule.observe(step)
    expected = reference_taus([[v for g in step for v in g] for step in stream], cfg)
    assert scored == pytest.approx(expected, abs=1e-9)
    # the rising policy pulls τ up, never down, never past the target, never by more than max_raise a step
    assert scored[-1] > cfg.tau0
    assert all(b >= a - 1e-12 and b - a <= cfg.max_raise + 1e-9 for a, b in zip(scored, scored[1:]))
    assert max(scored) <= cfg.tau_target + 1e-12
    assert schedule.num_raises == sum(b > a for a, b in zip(scored, scored[1:])) + (
        schedule.threshold > scored[-1]
    )


def test_tau_waits_for_a_full_window_and_never_lowers() -> None:
    schedule = make_schedule("medloc_spread", window=3, tau0=0.2, target_hit_rate=0.5)
    assert isinstance(schedule, SpreadSchedule) and schedule.threshold == 0.2
    assert not schedule.observe([0.9] * 8) and not schedule.observe([0.9] * 8)  # window not full yet
    assert schedule.observe([0.9] * 8) and schedule.threshold == pytest.approx(0.25)
    # the policy collapses: while good steps are most of the window τ still rises, then it holds, never lower
    raised = [schedule.observe([0.0] * 8) for _ in range(5)]
    assert raised == [True, False, False, False, False] and schedule.threshold == pytest.approx(0.3)
    stats = schedule.stats
    assert stats["all_miss_groups"] == 1.0 and stats["hit_rate"] == 0.0 and stats["iou_quantile"] == 0.0


def test_the_step_stats_split_all_hit_and_all_miss_groups() -> None:
    schedule = make_schedule("medloc_spread", tau0=0.5, window=4)
    schedule.observe([[0.6, 0.7], [0.1, 0.2], [0.4, 0.9], [0.5, 0.5]])
    stats = schedule.stats
    assert stats["all_hit_groups"] == 0.5 and stats["all_miss_groups"] == 0.25
    assert stats["threshold"] == 0.5 and stats["window_fill"] == 0.25 and not stats["raised"]


def test_state_round_trip_continues_identically() -> None:
    stream = iou_stream(3, 40)
    whole = SpreadSchedule(SpreadConfig(window=5))
    for step in stream:
        whole.observe(step)
    first = SpreadSchedule(SpreadConfig(window=5))
    for step in stream[:17]:
        first.observe(step)
    resumed = SpreadSchedule(SpreadConfig(window=5))
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for step in stream[17:]:
        resumed.observe(step)
    assert resumed.state_dict() == whole.state_dict()
    with pytest.raises(ValueError, match="differs"):
        SpreadSchedule(SpreadConfig(window=6)).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="cannot load"):
        make_schedule("medloc").load_state_dict(first.state_dict())


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="tau_target"):
        SpreadConfig(tau0=0.6, tau_target=0.5)
    for bad in ({"target_hit_rate": 1.0}, {"max_raise": 0.0}, {"iou_weight": -1.0}, {"window": 0}):
        with pytest.raises(ValueError):
            SpreadConfig(**bad)


def test_reward_is_the_hit_plus_weighted_iou_at_the_current_tau() -> None:
    from medloc_core.rewards.grounding import accuracy_values, make_reward_for_schedule
    from medloc_core.rewards.tracker import RewardTracker

    schedule = schedule_for("medloc_spread", spread=SpreadConfig(tau0=0.5, iou_weight=0.5))
    tracker = RewardTracker()
    reward = make_reward_for_schedule(schedule, tracker)
    answers = [
        '<answer>{"bbox_2d": [0, 0, 10, 10]}</answer>',  # IoU 1
        '<answer>{"bbox_2d": [0, 0, 10, 5]}</answer>',  # IoU 0.5: a hit (>=)
        '<answer>{"bbox_2d": [0, 0, 10, 4]}</answer>',  # IoU 0.4: a miss
        "no box",  # unparseable: IoU 0
    ]
    values = reward(None, answers, bbox=[[0, 0, 10, 10]] * 4)
    assert values == pytest.approx([1.5, 1.25, 0.2, 0.0])
    assert tracker.pop_step().ious == pytest.approx([1.0, 0.5, 0.4, 0.0])
    assert accuracy_values(schedule, [1.0, 0.5, 0.4, 0.0], [0.5] * 4) == pytest.approx(values)

    gated = schedule_for("medloc_spread", spread=SpreadConfig(tau0=0.5, iou_weight=0.5, gate_iou=True))
    values = make_reward_for_schedule(gated)(None, answers, bbox=[[0, 0, 10, 10]] * 4)
    assert values == pytest.approx([1.5, 1.25, 0.0, 0.0])  # a box below the bar earns nothing
    assert accuracy_values(gated, [1.0, 0.5, 0.4, 0.0], [0.5] * 4) == pytest.approx(values)


def test_all_hit_groups_with_different_boxes_are_alive_under_the_graded_reward() -> None:
    from medloc_core.training.callbacks import dead_group_split

    ious = [0.6, 0.7, 0.6, 0.6, 0.1, 0.2, 0.0, 0.0]  # groups of 2: hits that differ, equal hits, misses x2
    spread = make_schedule("medloc_spread")
    split = dead_group_split(ious, [None] * 8, 2, spread, {}, 0.5)
    assert split == {"train/dead_all_hit": 0.25, "train/dead_all_miss": 0.25}
    binary = make_schedule("medloc")  # the paper's 0/1 reward: every one-sided group is dead
    assert dead_group_split(ious, [None] * 8, 2, binary, {}, 0.5) == {
        "train/dead_all_hit": 0.5,
        "train/dead_all_miss": 0.5,
    }
