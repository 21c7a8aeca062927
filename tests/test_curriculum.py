"""MedLoc-R1 curriculum scheduler (hand-computed trajectories, conditions, refresh, freeze, state) and baselines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medloc_core.curriculum.baselines import (
    FixedSchedule,
)
from medloc_core.curriculum.config import CurriculumConfig
from medloc_core.curriculum.scheduler import CurriculumScheduler

STATS_KEYS = {
    "threshold",
    "hit_rate",
    "reward_std",
    "iou_margin",
    "window_fill",
    "cond_reward",
    "cond_stability",
    "cond_margin",
    "raised",
    "num_raises",
}

PERFECT = [1.0] * 8  # hit rate 1, std 0 and margin 1 - tau >= 0.2 at every tau <= 0.8: always ready


def run(scheduler, stream):
    """Feed a stream of steps; returns the threshold after each step and the 1-based steps that raised."""
    taus, raised_at = [], []
    for k, ious in enumerate(stream, start=1):
        if scheduler.observe(ious, step=k):
            raised_at.append(k)
        taus.append(scheduler.threshold)
    return taus, raised_at


# ------------------------------------------------------------------------------------------ trajectories

# With N = 30 and a half-window refresh, a raise needs a full window: the first at step 30, then one every
# N/2 = 15 steps. Thresholds by hand (tau0 0.3, target 0.8):
#   piecewise (0.15 below 0.55, 0.10 below 0.75, else 0.05): 0.3 -> 0.45 -> 0.6 -> 0.7 -> 0.8
#   linear  delta = max(0.05, 0.2 * (1 - (tau - 0.3) / 0.5)):
#           0.3 -> 0.5 -> 0.62 -> 0.692 -> 0.742 (0.0432 floored to 0.05) -> 0.792 -> 0.8 (capped)
#   cosine  delta = max(0.05, 0.1 * (1 + cos(pi * (tau - 0.3) / 0.5))):
#           0.3 -> 0.5 -> 0.5 + 0.1 * (1 + cos(0.4 pi)) = 0.6309016994 -> + 0.0513289330 = 0.6822306324
#           -> + 0.05 = 0.7322306324 -> 0.7822306324 -> 0.8
TRAJECTORIES = {
    "piecewise": [0.45, 0.6, 0.7, 0.8],
    "linear": [0.5, 0.62, 0.692, 0.742, 0.792, 0.8],
    "cosine": [0.5, 0.6309016994, 0.6822306324, 0.7322306324, 0.7822306324, 0.8],
}


@pytest.mark.parametrize("schedule", ["piecewise", "linear", "cosine"])
def test_hand_computed_trajectory(schedule):
    sched = CurriculumScheduler(CurriculumConfig(step_schedule=schedule))
    taus, raised_at = run(sched, [PERFECT] * 150)
    expected = TRAJECTORIES[schedule]
    assert raised_at == [30 + 15 * i for i in range(len(expected))]
    for step, tau in zip(raised_at, expected):
        assert taus[step - 1] == pytest.approx(tau, abs=1e-9)
        assert taus[step - 2] < tau  # the threshold did not move before the raise step
    assert taus[:29] == [0.3] * 29
    assert taus[-1] == 0.8
    assert sched.stats["num_raises"] == len(expected)


def test_trajectory_in_detail_piecewise():
    sched = CurriculumScheduler()
    taus, _ = run(sched, [PERFECT] * 80)
    expected = [0.3] * 29 + [0.45] * 15 + [0.6] * 15 + [0.7] * 15 + [0.8] * 6
    assert taus == pytest.approx(expected, abs=1e-12)


def test_step_size_tables():
    cfg = CurriculumConfig()
    assert [cfg.step_size(t) for t in (0.3, 0.45, 0.549, 0.55, 0.6, 0.749, 0.75, 0.8)] == [
        0.15,
        0.15,
        0.15,
        0.10,
        0.10,
        0.10,
        0.05,
        0.05,
    ]
    assert [cfg.min_hit_rate(t) for t in (0.3, 0.59, 0.6, 0.7, 0.75, 0.8)] == [
        0.8,
        0.8,
        0.75,
        0.75,
        0.55,
        0.55,
    ]
    assert [cfg.max_std(t) for t in (0.3, 0.6, 0.75, 0.8)] == [0.2, 0.35, 0.4, 0.4]


def test_stats_keys_and_values():
    sched = CurriculumScheduler()
    assert set(sched.stats) == STATS_KEYS
    sched.observe([0.5, 0.2, 0.9, 0.0])
    s = sched.stats
    assert set(s) == STATS_KEYS
    assert s["threshold"] == 0.3
    assert s["hit_rate"] == pytest.approx(0.5)
    assert s["reward_std"] == 0.0  # one entry
    assert s["iou_margin"] == pytest.approx(0.4 - 0.3)
    assert s["window_fill"] == pytest.approx(1 / 30)
    assert (s["cond_reward"], s["cond_stability"], s["cond_margin"]) == (False, True, True)
    assert s["raised"] is False and s["num_raises"] == 0
    json.dumps(s)


# ---------------------------------------------------------------------------- each condition blocks alone


def _low_hit_rate_step():  # hit rate 0.7 < P = 0.8; std 0; margin 0.63 - 0.3 >= 0.1
    return [0.9] * 7 + [0.0] * 3


def _unstable_cycle():  # per-step hit rates 1,1,1,1,0.4: mean 0.88 >= 0.8, std 0.24 > 0.2, margin 0.58
    return [[1.0] * 10] * 4 + [[1.0] * 4 + [0.0] * 6]


def _low_margin_step():  # hit rate 1, std 0, margin 0.35 - 0.3 = 0.05 < 0.1
    return [0.35] * 10


BLOCKERS = {
    "use_reward_check": ("cond_reward", [_low_hit_rate_step()] * 60),
    "use_stability_check": ("cond_stability", _unstable_cycle() * 12),
    "use_margin_check": ("cond_margin", [_low_margin_step()] * 60),
}


@pytest.mark.parametrize("switch", list(BLOCKERS))
def test_each_condition_blocks_a_raise_on_its_own(switch):
    flag, stream = BLOCKERS[switch]
    sched = CurriculumScheduler()
    _, raised_at = run(sched, stream)
    assert raised_at == []
    assert sched.threshold == 0.3
    s = sched.stats
    assert s["window_fill"] == 1.0
    assert s[flag] is False
    assert all(s[k] for k in ("cond_reward", "cond_stability", "cond_margin") if k != flag)
    # the same stream raises exactly at window fill once that one check is switched off
    ablated = CurriculumScheduler(CurriculumConfig(**{switch: False}))
    _, raised_at = run(ablated, stream[:30])
    assert raised_at == [30]
    assert ablated.threshold == pytest.approx(0.45)
    assert ablated.stats[flag] is False  # the flag still reports the comparison


def test_unstable_cycle_stats_by_hand():
    sched = CurriculumScheduler()
    run(sched, _unstable_cycle() * 6)
    s = sched.stats
    assert s["hit_rate"] == pytest.approx(0.88)
    assert s["reward_std"] == pytest.approx(0.24)  # population std of 24 x 1.0 and 6 x 0.4
    assert s["iou_margin"] == pytest.approx(0.88 - 0.3)


def test_sample_std_option():
    sched = CurriculumScheduler(CurriculumConfig(std_estimator="sample"))
    run(sched, _unstable_cycle() * 6)
    assert sched.stats["reward_std"] == pytest.approx(0.24 * math.sqrt(30 / 29))


def test_pooled_std_option():
    sched = CurriculumScheduler(CurriculumConfig(std_kind="pooled"))
    run(sched, _unstable_cycle() * 6)
    assert sched.stats["reward_std"] == pytest.approx(math.sqrt(0.88 * 0.12))


def test_hit_rate_exactly_at_P_counts():
    # 24 steps at hit rate 1.0 and 6 at 0.0 would fail stability; instead every step has hit rate exactly 0.8
    sched = CurriculumScheduler()
    _, raised_at = run(sched, [[1.0] * 8 + [0.0] * 2] * 30)
    assert raised_at == [30]  # 0.8 >= P(0.3) = 0.8 despite float rounding in the mean


def test_strict_greater_option():
    stream = [[0.3] * 4 + [1.0] * 4] * 30  # IoUs exactly at tau0 count only with >=
    ge = CurriculumScheduler()
    assert run(ge, stream)[1] == [30]
    assert ge.stats["hit_rate"] == pytest.approx(1.0)
    gt = CurriculumScheduler(CurriculumConfig(ge=False))
    assert run(gt, stream)[1] == []
    assert gt.stats["hit_rate"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------ refresh and freeze


def test_refresh_keeps_newest_half():
    sched = CurriculumScheduler()
    stream = [[1.0 - 0.001 * k] * 4 for k in range(30)]  # distinct, all ready
    _, raised_at = run(sched, stream)
    assert raised_at == [30]
    assert sched.window_size == 15
    assert sched.window_contents() == [list(s) for s in stream[15:]]
    assert sched.stats["window_fill"] == 1.0  # reported before the refresh
    sched.observe(PERFECT)
    assert sched.stats["window_fill"] == pytest.approx(16 / 30)


@pytest.mark.parametrize("fraction,kept", [(0.0, 30), (0.25, 23), (0.5, 15), (1.0, 0)])
def test_refresh_fraction_options(fraction, kept):
    sched = CurriculumScheduler(CurriculumConfig(refresh_fraction=fraction))
    _, raised_at = run(sched, [PERFECT] * 30)
    assert raised_at == [30]
    assert sched.window_size == kept


def test_zero_refresh_raises_back_to_back():
    sched = CurriculumScheduler(CurriculumConfig(refresh_fraction=0.0))
    taus, raised_at = run(sched, [PERFECT] * 33)
    assert raised_at == [30, 31, 32, 33]
    assert taus[-1] == 0.8


def test_window_not_full_no_raise_and_option():
    sched = CurriculumScheduler()
    _, raised_at = run(sched, [PERFECT] * 29)
    assert raised_at == []
    assert all(sched.stats[k] for k in ("cond_reward", "cond_stability", "cond_margin"))
    early = CurriculumScheduler(CurriculumConfig(require_full_window=False))
    _, raised_at = run(early, [PERFECT] * 5)
    assert raised_at == [2, 3, 4, 5]  # checked from 2 entries on; each refresh leaves 1 entry


def test_freeze_at_target():
    sched = CurriculumScheduler()
    taus, raised_at = run(sched, [PERFECT] * 300)
    assert raised_at == [30, 45, 60, 75]
    assert taus[74:] == [0.8] * (300 - 74)
    assert sched.frozen
    assert sched.stats["num_raises"] == 4 and sched.stats["raised"] is False


def test_window_overflow_keeps_last_n():
    sched = CurriculumScheduler(CurriculumConfig(window=4))
    for k in range(10):
        sched.observe([k / 100])  # never ready (hit rate 0)
    assert sched.window_contents() == [[0.06], [0.07], [0.08], [0.09]]
    assert sched.stats["window_fill"] == 1.0 and sched.threshold == 0.3


# ---------------------------------------------------------------------------------------- A4 and A1


def test_recompute_vs_stored_hits_differ_after_raise():
    # 30 steps at IoU 0.44: hits at tau 0.3, margin 0.14 -> raise to 0.45. The kept 15 entries are misses at
    # 0.45 when recomputed (A4 default) but stay hits when stored. Then 15 steps at IoU 0.9.
    stream = [[0.44] * 8] * 30 + [[0.9] * 8] * 15
    recompute = CurriculumScheduler()
    stored = CurriculumScheduler(CurriculumConfig(recompute_hits=False))
    _, r1 = run(recompute, stream)
    _, r2 = run(stored, stream)
    assert r1 == [30]
    assert r2 == [30, 45]
    assert recompute.stats["hit_rate"] == pytest.approx(0.5)  # 15 misses + 15 hits at 0.45
    assert stored.stats["hit_rate"] == pytest.approx(1.0)
    assert recompute.threshold == pytest.approx(0.45) and stored.threshold == pytest.approx(0.6)


def test_group_window_unit():
    cfg = CurriculumConfig(window_unit="group", window=4)
    sched = CurriculumScheduler(cfg)
    assert sched.observe([[1.0] * 8, [1.0] * 8]) is False  # 2 of 4 entries
    assert sched.window_size == 2
    assert sched.observe([[1.0] * 8, [0.9] * 8]) is True  # full: raise, keep newest 2
    assert sched.threshold == pytest.approx(0.45)
    assert sched.window_contents() == [[1.0] * 8, [0.9] * 8]
    # per-group hit rates feed the std: 2 groups of 1.0 and 2 of 0.0 -> std 0.5
    g = CurriculumScheduler(cfg)
    g.observe([[1.0] * 4, [0.0] * 4, [1.0] * 4, [0.0] * 4])
    assert g.stats["reward_std"] == pytest.approx(0.5)
    # the same IoUs as one step entry: std 0 (one entry)
    s = CurriculumScheduler(CurriculumConfig(window=4))
    s.observe([[1.0] * 4, [0.0] * 4, [1.0] * 4, [0.0] * 4])
    assert s.window_size == 1 and s.stats["reward_std"] == 0.0 and s.stats["hit_rate"] == 0.5


@pytest.mark.parametrize(
    "bad,match",
    [
        ([], "no IoUs"),
        ([0.5, float("nan")], r"\[0, 1\]"),
        ([1.5], r"\[0, 1\]"),
        (["x"], "not a number"),
        ([0.5, [0.5]], "mix"),
    ],
)
def test_observe_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        CurriculumScheduler().observe(bad)


def test_observe_accepts_numpy():
    sched = CurriculumScheduler()
    sched.observe(np.full(8, 0.6))
    assert sched.stats["hit_rate"] == 1.0


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"tau0": 1.5}, "tau0"),
        ({"tau_target": 0.2}, "tau_target"),
        ({"window": 1}, "window"),
        ({"step_schedule": "exp"}, "step_schedule"),
        ({"window_unit": "batch"}, "window_unit"),
        ({"std_kind": "x"}, "std_kind"),
        ({"refresh_fraction": 2.0}, "refresh_fraction"),
        ({"step_schedule": "linear", "min_step": 0.0}, "min_step"),
        ({"p_table": ((0.8, 0.5), (0.6, 0.4))}, "p_table"),
    ],
)
def test_config_validation_names_field(kw, field):
    with pytest.raises(ValueError, match=field):
        CurriculumConfig(**kw)


def test_config_dict_round_trip_and_lists():
    cfg = CurriculumConfig(step_schedule="cosine", p_table=[[0.5, 0.9], [1.0, 0.6]])
    assert cfg.p_table == ((0.5, 0.9), (1.0, 0.6))
    again = CurriculumConfig.model_validate(json.loads(json.dumps(cfg.model_dump(mode="json"))))
    assert again == cfg
    with pytest.raises(ValueError, match="tau00"):
        CurriculumConfig.model_validate({"tau00": 0.1})


# ------------------------------------------------------------------------------------------- state dict


def _random_stream(seed, n, g=8):
    rng = np.random.default_rng(seed)
    # IoUs drift upwards so that several raises happen
    return [list(np.clip(rng.normal(0.55 + 0.008 * k, 0.08, size=g), 0, 1)) for k in range(n)]


@pytest.mark.parametrize("schedule", ["piecewise", "linear", "cosine"])
def test_state_dict_round_trip_continues_identically(schedule):
    cfg = CurriculumConfig(step_schedule=schedule, window=10)
    stream = _random_stream(3, 50)
    ref = CurriculumScheduler(cfg)
    ref_taus, ref_stats = [], []
    snapshot = None
    for k, ious in enumerate(stream):
        if k == 20:
            snapshot = json.dumps(ref.state_dict())
        ref.observe(ious)
        ref_taus.append(ref.threshold)
        ref_stats.append(ref.stats)
    assert ref.stats["num_raises"] >= 2, "the stream should exercise raises on both sides of the snapshot"
    restored = CurriculumScheduler(cfg)
    restored.load_state_dict(json.loads(snapshot))
    for k, ious in enumerate(stream[20:], start=20):
        restored.observe(ious)
        assert restored.threshold == ref_taus[k]
        assert restored.stats == ref_stats[k]
    assert restored.state_dict() == ref.state_dict()


def test_load_state_dict_rejects_other_config_and_kind():
    state = CurriculumScheduler().state_dict()
    with pytest.raises(ValueError, match="window"):
        CurriculumScheduler(CurriculumConfig(window=10)).load_state_dict(state)
    with pytest.raises(ValueError, match="fixed"):
        FixedSchedule().load_state_dict(state)


def test_stored_hits_state_round_trip():
    cfg = CurriculumConfig(recompute_hits=False, window=6)
    stream = _random_stream(4, 30)
    a = CurriculumScheduler(cfg)
    for ious in stream[:12]:
        a.observe(ious)
    b = CurriculumScheduler(cfg)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for ious in stream[12:]:
        assert a.observe(ious) == b.observe(ious)
        assert a.stats == b.stats


# ------------------------------------------------------------------------------------------- baselines
