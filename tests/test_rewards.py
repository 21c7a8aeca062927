"""Reward functions called the way TRL 1.16 calls them, the tracker's failure counts, and MedGRPO."""

from __future__ import annotations

import functools
import math
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from medloc_core.curriculum import PerDatasetSchedule
from medloc_core.curriculum.baselines import FixedSchedule, RawIoUSchedule, VTriuneSchedule
from medloc_core.curriculum.config import CurriculumConfig
from medloc_core.curriculum.scheduler import CurriculumScheduler
from medloc_core.rewards.grounding import (
    completion_text,
    format_reward,
    make_format_reward,
    make_iou_threshold_reward,
    make_raw_iou_reward,
    make_reward_for_schedule,
    make_vtriune_reward,
)
from medloc_core.rewards.medgrpo import fit_medgrpo_stats, make_medgrpo_normalized_reward, medgrpo_normalize
from medloc_core.rewards.tracker import RewardTracker

GT = [10.0, 10.0, 30.0, 30.0]  # 20 x 20 box, input-frame pixels


def answer(box, think=True, label="lesion"):
    body = f'<answer>{{"bbox_2d": {list(box)}, "label": "{label}"}}</answer>'
    return f"<think>Dark round area.</think>{body}" if think else body


# IoU with GT of each completion, by hand:
TEXTS = [
    answer([10, 10, 30, 30]),  # 1.0
    answer([10, 10, 30, 20]),  # half height: 200 / 400 = 0.5
    answer([20, 10, 40, 30]),  # shifted half: 200 / 600 = 1/3
    answer([50, 50, 60, 60]),  # disjoint: 0
    "I am not sure where the lesion is.",  # unparseable -> 0, counted
    "<think>hm</think><answer>none</answer>",  # unparseable -> 0, counted
]
IOUS = [1.0, 0.5, 1 / 3, 0.0, 0.0, 0.0]


class MetricLog:
    def __init__(self):
        self.calls = []

    def __call__(self, name, value):
        self.calls.append((name, value))

    def get(self, name):
        return [v for n, v in self.calls if n == name]


def trl_call(func, texts, *, chat=True, bbox=None, dataset=None, log_metric=None, step=0):
    """Call a reward function with exactly the keyword arguments GRPOTrainer._calculate_rewards passes."""
    n = len(texts)
    prompts = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": None}, {"type": "text", "text": "Find it."}],
            }
        ]
    ] * n
    completions = [[{"role": "assistant", "content": t}] for t in texts] if chat else list(texts)
    kwargs = {
        "bbox": bbox if bbox is not None else [GT] * n,
        "image": [None] * n,
        "trainer_state": SimpleNamespace(global_step=step),
        "log_extra": lambda column, values: None,
        "log_metric": log_metric if log_metric is not None else MetricLog(),
    }
    if dataset is not None:
        kwargs["dataset"] = dataset
    return func(prompts=prompts, completions=completions, completion_ids=[[1, 2, 3]] * n, **kwargs)


# ------------------------------------------------------------------------------------- completion_text


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("plain", "plain"),
        ([{"role": "assistant", "content": "chat"}], "chat"),
        ({"role": "assistant", "content": "msg"}, "msg"),
        (
            [
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            "ab",
        ),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "last"}], "last"),
        ([], ""),
    ],
)
def test_completion_text(completion, expected):
    assert completion_text(completion) == expected


def test_completion_text_rejects_unknown_shapes():
    with pytest.raises(TypeError, match="int"):
        completion_text(42)
    with pytest.raises(TypeError, match="message dicts"):
        completion_text(["a", "b"])


# ---------------------------------------------------------------------------------------- format reward

FORMAT_CASES = [
    # parser="lenient": text, default, no-think, integers-only, partial-credit
    (answer([10, 10, 30, 30]), 1.0, 0.0, 1.0, 1.0),
    ("  " + answer([10, 10, 30, 30]) + "\n", 1.0, 0.0, 1.0, 1.0),
    (answer([10.5, 10, 30, 30]), 1.0, 0.0, 0.0, 1.0),
    (answer([10, 10, 30, 30], think=False), 0.0, 1.0, 0.0, 0.5),
    ("<think>a</think>\n<answer>[10, 10, 30, 30]</answer>", 0.0, 0.0, 0.0, 0.5),  # bare list, no object
    ('<think>a</think><answer>{"bbox_2d": [10, 10, 30]}</answer>', 0.0, 0.0, 0.0, 0.0),
    (answer([10, 10, 30, 30]) + " trailing words", 0.0, 0.0, 0.0, 0.5),
    ("no tags at all", 0.0, 0.0, 0.0, 0.0),
    ('<think>a</think><answer>{"bbox_2d": [-1, 10, 30, 30]}</answer>', 1.0, 0.0, 0.0, 1.0),
]


@pytest.mark.parametrize("text,default,no_think,ints,partial", FORMAT_CASES)
def test_format_reward_variants(text, default, no_think, ints, partial):
    lenient = functools.partial(make_format_reward, parser="lenient")
    assert trl_call(lenient(), [text]) == [default]
    assert trl_call(lenient(require_think=False, name="f2"), [text], chat=False) == [no_think]
    assert trl_call(lenient(allow_floats=False, name="f3"), [text]) == [ints]
    assert trl_call(lenient(partial_credit=True, name="f4"), [text]) == [partial]


def test_reward_names_are_meaningful():
    schedule = CurriculumScheduler()
    assert format_reward.__name__ == "format_reward"
    assert make_iou_threshold_reward(schedule).__name__ == "iou_accuracy_reward"
    assert make_raw_iou_reward().__name__ == "raw_iou_reward"
    assert make_vtriune_reward(VTriuneSchedule(10)).__name__ == "vtriune_iou_reward"
    assert make_format_reward(name="strict_format").__name__ == "strict_format"
    med = make_medgrpo_normalized_reward(make_raw_iou_reward(), {"a": (0.1, 0.2, 0.3)})
    assert med.__name__ == "medgrpo_raw_iou_reward"


@pytest.mark.slow
def test_trl_names_the_log_keys_after_our_names():
    utils = pytest.importorskip("trl.trainer.utils")
    assert utils.get_callable_name(make_iou_threshold_reward(FixedSchedule())) == "iou_accuracy_reward"
    assert utils.get_callable_name(format_reward) == "format_reward"


# ------------------------------------------------------------------------------------------ IoU rewards


@pytest.mark.parametrize("chat", [True, False])
def test_threshold_reward_reads_tau_and_counts_failures(chat):
    schedule = FixedSchedule(0.5)
    tracker = RewardTracker()
    log = MetricLog()
    reward = make_iou_threshold_reward(schedule, tracker)
    assert trl_call(reward, TEXTS, chat=chat, log_metric=log) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert log.get("parse_failure_rate") == [pytest.approx(2 / 6)]
    assert log.get("iou/mean") == [pytest.approx(sum(IOUS) / 6)]
    rec = tracker.pop_step()
    assert rec.ious == pytest.approx(IOUS)
    assert rec.parse_failures == 2 and rec.completions == 6
    assert rec.parse_failure_rate == pytest.approx(1 / 3)
    assert rec.datasets == [None] * 6
    assert rec.per_reward == {"iou_accuracy_reward": {"calls": 1, "completions": 6, "parse_failures": 2}}
    empty = tracker.pop_step()
    assert empty.ious == [] and empty.completions == 0 and empty.parse_failure_rate == 0.0


def test_threshold_follows_the_curriculum():
    schedule = CurriculumScheduler(CurriculumConfig(window=2))
    reward = make_iou_threshold_reward(schedule)
    assert trl_call(reward, TEXTS) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # tau 0.3: 1/3 is a hit
    schedule.observe([1.0] * 4)
    schedule.observe([1.0] * 4)
    assert schedule.threshold == pytest.approx(0.45)
    assert trl_call(reward, TEXTS) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # tau 0.45: 1/3 misses


def test_strict_schedule_uses_greater_than():
    texts = [answer([10, 10, 30, 20])]  # IoU exactly 0.5
    assert trl_call(make_iou_threshold_reward(FixedSchedule(0.5)), texts) == [1.0]
    assert trl_call(make_iou_threshold_reward(FixedSchedule(0.5, ge=False)), texts) == [0.0]


def test_raw_iou_reward():
    tracker = RewardTracker()
    out = trl_call(make_raw_iou_reward(tracker), TEXTS)
    assert out == pytest.approx(IOUS)
    assert tracker.pop_step().parse_failures == 2


def test_vtriune_reward_is_thresholded_continuous():
    schedule = VTriuneSchedule(total_steps=10)  # eps 0.5 at the start
    out = trl_call(make_vtriune_reward(schedule), TEXTS)
    assert out == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.0, 0.0])
    for _ in range(2):  # progress 0.2
        schedule.observe([0.5])
    assert schedule.threshold == 0.65
    assert trl_call(make_vtriune_reward(schedule), TEXTS) == pytest.approx([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])


def test_raw_iou_schedule_rejected_by_threshold_reward():
    with pytest.raises(ValueError, match="no threshold"):
        trl_call(make_iou_threshold_reward(RawIoUSchedule()), TEXTS)


def test_reward_for_schedule_picks_the_matching_reward():
    assert make_reward_for_schedule(RawIoUSchedule()).__name__ == "raw_iou_reward"
    assert make_reward_for_schedule(VTriuneSchedule(5)).__name__ == "vtriune_iou_reward"
    assert make_reward_for_schedule(CurriculumScheduler()).__name__ == "iou_accuracy_reward"
    per = PerDatasetSchedule(RawIoUSchedule, ["a"])
    assert make_reward_for_schedule(per).__name__ == "raw_iou_reward"


def test_per_dataset_thresholds():
    schedule = PerDatasetSchedule(lambda: FixedSchedule(0.5), ["ham10000", "tn3k"])
    schedule.schedules["tn3k"] = FixedSchedule(0.3)
    tracker = RewardTracker()
    datasets = ["ham10000", "tn3k", "tn3k", "ham10000", "tn3k", "ham10000"]
    out = trl_call(make_iou_threshold_reward(schedule, tracker), TEXTS, dataset=datasets)
    assert out == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # 1/3 passes tn3k's 0.3
    rec = tracker.pop_step()
    assert rec.datasets == datasets
    assert rec.ious_by_dataset()["tn3k"] == pytest.approx([0.5, 1 / 3, 0.0])
    with pytest.raises(ValueError, match="dataset"):
        trl_call(make_iou_threshold_reward(schedule), TEXTS)


def test_tracker_accumulates_calls_and_keeps_primary():
    tracker = RewardTracker()
    acc = make_iou_threshold_reward(FixedSchedule(0.5), tracker)
    raw = make_raw_iou_reward(tracker)
    trl_call(acc, TEXTS[:3])
    trl_call(raw, TEXTS[:3])
    trl_call(acc, TEXTS[3:])  # a second generation batch in the same optimizer step
    trl_call(raw, TEXTS[3:])
    rec = tracker.pop_step()
    assert rec.ious == pytest.approx(IOUS)  # only the primary (first) reward's IoUs, not doubled
    assert rec.completions == 6 and rec.parse_failures == 2
    assert rec.per_reward["iou_accuracy_reward"] == {"calls": 2, "completions": 6, "parse_failures": 2}
    assert rec.per_reward["raw_iou_reward"] == {"calls": 2, "completions": 6, "parse_failures": 2}
    assert tracker.total_completions == 6 and tracker.total_parse_failures == 2


def test_ground_truth_errors_name_the_row():
    reward = make_raw_iou_reward()
    with pytest.raises(ValueError, match="'bbox' column"):
        reward(prompts=["p"], completions=["[1, 2, 3, 4]"])
    with pytest.raises(ValueError, match="row 1"):
        trl_call(reward, TEXTS[:2], bbox=[GT, [1, 2, 3]])
    with pytest.raises(ValueError, match="row 0"):
        trl_call(reward, TEXTS[:1], bbox=[[1, 2, "x", 4]])


def test_without_log_metric_and_empty_batch():
    reward = make_raw_iou_reward()
    assert reward(prompts=["p"], completions=[answer([10, 10, 30, 30])], bbox=[GT]) == [1.0]
    assert reward(prompts=[], completions=[], bbox=[]) == []


# ------------------------------------------------------------------------------------------- MedGRPO


def test_medgrpo_normalize_values():
    assert medgrpo_normalize(0.5, 0.3, 0.5, 0.7) == pytest.approx(0.5)
    # x = p75: z = 3 * 0.2 / 0.4 = 1.5
    assert medgrpo_normalize(0.7, 0.3, 0.5, 0.7) == pytest.approx(1 / (1 + math.exp(-1.5)))
    assert medgrpo_normalize(0.3, 0.3, 0.5, 0.7, k=2.0) == pytest.approx(1 / (1 + math.exp(1.0)))
    out = medgrpo_normalize(np.array([0.0, 0.5, 1.0]), 0.3, 0.5, 0.7)
    assert isinstance(out, np.ndarray) and out.shape == (3,)
    assert np.all(np.diff(out) > 0)
    # IQR = 0 is guarded: a step function without NaN or overflow warnings
    with np.errstate(all="raise"):
        guarded = medgrpo_normalize(np.array([0.1, 0.2, 0.3]), 0.2, 0.2, 0.2)
    np.testing.assert_allclose(guarded, [0.0, 0.5, 1.0], atol=1e-12)
    # per-element statistics broadcast
    both = medgrpo_normalize(
        np.array([0.5, 0.12]), np.array([0.3, 0.05]), np.array([0.5, 0.12]), np.array([0.7, 0.2])
    )
    np.testing.assert_allclose(both, [0.5, 0.5])


def test_fit_medgrpo_stats():
    stats = fit_medgrpo_stats({"copesd": [0.1, 0.2, 0.3, 0.4, 0.5], "ego": [0.12]})
    assert stats["copesd"] == pytest.approx((0.2, 0.3, 0.4))
    assert stats["ego"] == pytest.approx((0.12, 0.12, 0.12))
    with pytest.raises(ValueError, match="'empty'"):
        fit_medgrpo_stats({"empty": []})
    with pytest.raises(ValueError, match="non-finite"):
        fit_medgrpo_stats({"bad": [0.1, float("nan")]})


def test_medgrpo_wrapper_maps_each_sample_through_its_dataset():
    stats = {"easy": (0.6, 0.8, 0.9), "hard": (0.1, 0.2, 0.4)}
    tracker = RewardTracker()
    reward = make_medgrpo_normalized_reward(make_raw_iou_reward(tracker), stats)
    texts = [answer([10, 10, 30, 20]), answer([10, 10, 30, 20])]  # both IoU 0.5
    out = trl_call(reward, texts, dataset=["easy", "hard"])
    assert out[0] == pytest.approx(1 / (1 + math.exp(-3 * (0.5 - 0.8) / 0.3)))
    assert out[1] == pytest.approx(1 / (1 + math.exp(-3 * (0.5 - 0.2) / 0.3)))
    assert out[0] < 0.5 < out[1]  # the same IoU is below par on the easy set, above on the hard one
    assert tracker.pop_step().ious == pytest.approx([0.5, 0.5])  # raw IoUs still reach the tracker
    with pytest.raises(ValueError, match="'other'"):
        trl_call(reward, texts[:1], dataset=["other"])


# --------------------------------------------------------------------------------------- import and speed


def test_import_is_light():
    code = (
        "import sys, medloc_core.rewards.grounding, medloc_core.curriculum.scheduler, medloc_core.boxes;"
        "bad = [m for m in ('torch', 'transformers', 'trl', 'zenml', 'mlflow') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_step_of_64_completions_is_cheap():
    rng = np.random.default_rng(0)
    texts = [answer([int(v) for v in rng.integers(0, 60, 4)]) for _ in range(64)]
    schedule = CurriculumScheduler()
    tracker = RewardTracker()
    acc = make_iou_threshold_reward(schedule, tracker)
    for _ in range(30):  # fill the window
        trl_call(acc, texts)
        trl_call(format_reward, texts)
        schedule.observe(tracker.pop_step().ious)
    t0 = time.perf_counter()
    for _ in range(20):
        trl_call(acc, texts)
        trl_call(format_reward, texts)
        schedule.observe(tracker.pop_step().ious)
    per_step = (time.perf_counter() - t0) / 20
    assert per_step < 0.05, f"{per_step * 1e6:.0f} us per step"
