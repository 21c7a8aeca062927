"""The baseline schedules (fixed, raw IoU, V-Triune), make_schedule, the per-dataset wrapper, and the protocol every
schedule shares."""

from __future__ import annotations

import json

import pytest

from medloc_core.curriculum import PerDatasetSchedule, make_schedule
from medloc_core.curriculum.baselines import (
    VTRIUNE_MEDICAL_THRESHOLDS,
    FixedSchedule,
    RawIoUSchedule,
    VTriuneSchedule,
)
from medloc_core.curriculum.config import CurriculumConfig
from medloc_core.curriculum.scheduler import CurriculumScheduler


def test_fixed_schedule():
    s = FixedSchedule(0.5)
    assert s.name == "fixed" and s.threshold == 0.5
    assert s.observe([0.5, 0.4, 0.9, 0.1]) is False
    assert s.stats == {
        "threshold": 0.5,
        "hit_rate": 0.5,
        "iou_mean": pytest.approx(0.475),
        "raised": False,
        "num_raises": 0,
    }
    strict = FixedSchedule(0.5, ge=False)
    strict.observe([0.5, 0.4, 0.9, 0.1])
    assert strict.stats["hit_rate"] == 0.25
    t = FixedSchedule(0.1)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert t.threshold == 0.5 and t.stats == s.stats


def test_raw_iou_schedule():
    s = RawIoUSchedule()
    assert s.threshold is None and s.name == "raw_iou"
    assert s.observe([0.2, 0.4]) is False
    assert s.stats["iou_mean"] == pytest.approx(0.3)
    t = RawIoUSchedule()
    t.load_state_dict(s.state_dict())
    assert t.stats == s.stats


def test_vtriune_schedule_progress():
    s = VTriuneSchedule(total_steps=20)
    assert s.thresholds == VTRIUNE_MEDICAL_THRESHOLDS
    eps, changed_at = [], []
    for k in range(1, 25):
        eps.append(s.threshold)  # the eps that scores step k
        if s.observe([0.7] * 4):
            changed_at.append(k)
    # progress after k steps = k/20: <= 0.10 -> 0.5 (k <= 2), <= 0.25 -> 0.65 (k <= 5), else 0.75
    assert eps[:8] == [0.5, 0.5, 0.5, 0.65, 0.65, 0.65, 0.75, 0.75]
    assert changed_at == [3, 6]
    assert eps[-1] == 0.75 and s.stats["num_raises"] == 2
    assert s.stats["hit_rate"] == 0.0  # 0.7 < 0.75


def test_vtriune_explicit_step_and_state():
    s = VTriuneSchedule(total_steps=100, thresholds=((0.10, 0.85), (0.25, 0.95), (1.0, 0.99)))
    assert s.threshold == 0.85
    s.observe([0.9], step=11)
    assert s.threshold == 0.95 and s.stats["raised"] is True
    t = VTriuneSchedule(total_steps=100, thresholds=((0.10, 0.85), (0.25, 0.95), (1.0, 0.99)))
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert t.step == 11 and t.threshold == 0.95
    with pytest.raises(ValueError, match="backwards"):
        s.observe([0.9], step=5)
    with pytest.raises(ValueError, match="differs"):
        VTriuneSchedule(total_steps=50).load_state_dict(s.state_dict())


def test_make_schedule():
    m = make_schedule("medloc")
    assert isinstance(m, CurriculumScheduler) and m.config == CurriculumConfig()
    m2 = make_schedule("medloc", CurriculumConfig(window=10), step_schedule="linear")
    assert m2.config == CurriculumConfig(window=10, step_schedule="linear")
    assert make_schedule("fixed", tau=0.7).threshold == 0.7
    assert make_schedule("fixed").threshold == 0.5
    assert make_schedule("raw_iou").threshold is None
    v = make_schedule("vtriune", total_steps=10)
    assert isinstance(v, VTriuneSchedule) and v.total_steps == 10
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule("vtriune")
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("cosine")
    for name in ("medloc", "fixed", "raw_iou", "vtriune"):
        s = make_schedule(name, total_steps=10)
        assert s.name == name
        for attr in ("threshold", "observe", "stats", "state_dict", "load_state_dict", "ge"):
            assert hasattr(s, attr)


def test_per_dataset_schedule():
    pd = PerDatasetSchedule(lambda: CurriculumScheduler(CurriculumConfig(window=4)), ["ham10000", "tn3k"])
    assert pd.name == "per_dataset:medloc"
    for _ in range(4):
        raised = pd.observe_by_dataset({"ham10000": [1.0] * 4, "tn3k": [0.1] * 4})
    assert raised == {"ham10000": True, "tn3k": False}
    assert pd.threshold_for("ham10000") == pytest.approx(0.45)
    assert pd.threshold_for("tn3k") == 0.3
    assert pd.stats["ham10000/num_raises"] == 1 and pd.stats["tn3k/hit_rate"] == 0.0
    with pytest.raises(KeyError, match="heel"):
        pd.threshold_for("heel")
    # flat IoUs with dataset labels; tn3k has no IoUs this step and does not move
    assert pd.observe([1.0, 1.0], datasets=["ham10000", "ham10000"]) is False
    assert pd.schedules["ham10000"].window_size == 3 and pd.schedules["tn3k"].window_size == 4
    other = PerDatasetSchedule(lambda: CurriculumScheduler(CurriculumConfig(window=4)), ["ham10000", "tn3k"])
    other.load_state_dict(json.loads(json.dumps(pd.state_dict())))
    assert other.thresholds == pd.thresholds and other.stats == pd.stats
    with pytest.raises(ValueError, match="datasets"):
        PerDatasetSchedule(CurriculumScheduler, ["a"]).load_state_dict(pd.state_dict())


def test_every_schedule_implements_the_same_protocol() -> None:
    from medloc_core.curriculum import PerDatasetSchedule, make_schedule
    from medloc_core.curriculum.base import Schedule
    from medloc_core.curriculum.baselines import FixedSchedule, RawIoUSchedule, VTriuneSchedule
    from medloc_core.curriculum.config import CurriculumConfig

    per = PerDatasetSchedule(lambda: FixedSchedule(0.4), ["a", "b"])
    schedules = [
        make_schedule("medloc", CurriculumConfig()),
        FixedSchedule(0.5),
        RawIoUSchedule(),
        VTriuneSchedule(10),
        per,
    ]
    for schedule in schedules:
        assert isinstance(schedule, Schedule), type(schedule).__name__
        assert schedule.num_raises == 0
        assert schedule.threshold_for("a") == schedule.threshold
    assert [s.per_dataset for s in schedules] == [False, False, False, False, True]
    assert per.threshold == 0.4 and per.thresholds == {"a": 0.4, "b": 0.4}
    with pytest.raises(ValueError, match="needs the dataset of each IoU"):
        per.observe([0.5, 0.6])
