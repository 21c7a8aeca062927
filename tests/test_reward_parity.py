"""Reward parity with VLM-R1's REC rewards (``vlm_modules/qwen_module.py`` at om-ai-lab/VLM-R1 HEAD 90052f4).

Each row is a completion with VLM-R1's verdicts: its format reward (``format_reward_rec``: ``re.search`` of
think + answer with ``{ ... [int, int, int, int] ... }``) and the box its ``iou_reward`` reads (the first
``<answer>...</answer>`` block's first ``[int, int, int, int]``, no space after ``[``, corners as written), or
None where it scores 0. ``lenient`` is our evaluation parser's box on the same text, to show where they differ.
"""

from __future__ import annotations

import pytest

from medloc_core.boxes import iou, parse_box
from medloc_core.curriculum.baselines import FixedSchedule, VTriuneSchedule
from medloc_core.rewards.grounding import (
    DEFAULT_REWARD_PARSER,
    make_format_reward,
    make_iou_threshold_reward,
    make_raw_iou_reward,
    make_vtriune_reward,
    reward_weights,
)

GT = (10.0, 20.0, 30.0, 40.0)
BOX = (10.0, 20.0, 30.0, 40.0)
OBJ = '{"bbox_2d": [10, 20, 30, 40], "label": "lesion"}'

# text, VLM-R1 format reward, VLM-R1 box (None: accuracy 0), lenient box
PARITY = [
    (f"<think>round dark area</think><answer>{OBJ}</answer>", 1.0, BOX, BOX),
    (f"<think>a</think>\n<answer>\n{OBJ}\n</answer>", 1.0, BOX, BOX),
    (f"Sure. <think>a</think><answer>{OBJ}</answer>", 1.0, BOX, BOX),  # text before
    (f"<think>a</think><answer>{OBJ}</answer> Done.", 1.0, BOX, BOX),  # text after
    ('<think>a</think><answer>{"bbox_2d": [10, 20, 30, 40], "label": "a<b"}</answer>', 1.0, BOX, BOX),
    ('<think>a</think><answer>{"bbox_2d": [10.5, 20, 30, 40]}</answer>', 0.0, None, (10.5, 20, 30, 40)),
    ('<think>a</think><answer>{"bbox_2d": [ 10, 20, 30, 40]}</answer>', 0.0, None, BOX),  # space after [
    ('<think>a</think><answer>{"bbox_2d": [-10, 20, 30, 40]}</answer>', 0.0, None, (-10, 20, 30, 40)),
    ('<think>a</think><answer>{"bbox_2d": ["10", "20", "30", "40"]}</answer>', 0.0, None, BOX),  # quoted
    ("The box is [10, 20, 30, 40].", 0.0, None, BOX),  # no answer tag
    (f"<think>a</think><answer>{OBJ}", 0.0, None, BOX),  # unclosed answer
    ('<think>a</think><answer>{"bbox_2d": [30, 40, 10, 20]}</answer>', 1.0, (30, 40, 10, 20), BOX),  # swapped
    ("<think>maybe [10, 20, 30, 40]</think><answer>not sure</answer>", 0.0, None, None),  # box only in think
    ("<think>a</think><answer>[10, 20, 30, 40]</answer>", 0.0, BOX, BOX),  # no JSON object: accuracy only
    (f"<answer>{OBJ}</answer>", 0.0, BOX, BOX),  # no think block
    (f"<think>a</think><answer>{{}}</answer><answer>{OBJ}</answer>", 1.0, None, BOX),  # first block empty
    ('<think>a</think><answer>{"bbox_2d": [10, 20, 30, 40, 50]}</answer>', 0.0, None, None),  # five numbers
    ('<think>a</think><answer>{"bbox_2d": [[10, 20, 30, 40]]}</answer>', 1.0, BOX, BOX),  # nested list
    (f"<THINK>a</THINK><ANSWER>{OBJ}</ANSWER>", 0.0, None, BOX),  # tags are case-sensitive
    ('<think>a</think><answer>{"bbox_2d": [10,20,30,40]}</answer>', 1.0, BOX, BOX),  # no spaces
]


def _call(reward, texts, **columns):
    return reward(
        prompts=["p"] * len(texts),
        completions=[[{"role": "assistant", "content": t}] for t in texts],
        **columns,
    )


def test_the_default_reward_parser_is_vlmr1() -> None:
    assert DEFAULT_REWARD_PARSER == "vlmr1"


@pytest.mark.parametrize("text,fmt,box,lenient", PARITY)
def test_vlmr1_parser_gives_vlmr1_verdicts(text, fmt, box, lenient) -> None:
    assert _call(make_format_reward(), [text]) == [fmt]
    assert parse_box(text, parser="vlmr1") == box
    assert parse_box(text, parser="lenient") == (
        None if lenient is None else tuple(float(v) for v in lenient)
    )
    expected_iou = 0.0 if box is None else iou(box, GT)
    assert _call(make_raw_iou_reward(), [text], bbox=[GT]) == [expected_iou]
    assert _call(make_iou_threshold_reward(FixedSchedule(0.5)), [text], bbox=[GT]) == [
        float(expected_iou >= 0.5)
    ]
    assert _call(make_vtriune_reward(FixedSchedule(0.5)), [text], bbox=[GT]) == [
        expected_iou if expected_iou >= 0.5 else 0.0
    ]


def test_parsers_disagree_where_vlmr1_is_stricter() -> None:
    """The table is not trivially the lenient parser: the two differ on many rows."""
    differ = [row for row in PARITY if (row[2] is None) != (row[3] is None) or row[2] != row[3]]
    assert len(differ) >= 8


def test_answer_only_format_drops_the_think_block() -> None:
    reward = make_format_reward(require_think=False)
    assert _call(reward, [f"<answer>{OBJ}</answer>", "<answer>[10, 20, 30, 40]</answer>"]) == [1.0, 0.0]


def test_lenient_parser_is_selectable_on_every_reward() -> None:
    text = '<answer>{"bbox_2d": [10.0, 20.0, 30.0, 40.0]}</answer>'
    assert _call(make_raw_iou_reward(parser="vlmr1"), [text], bbox=[GT]) == [0.0]
    assert _call(make_raw_iou_reward(parser="lenient"), [text], bbox=[GT]) == [1.0]
    assert _call(make_vtriune_reward(VTriuneSchedule(10), parser="lenient"), [text], bbox=[GT]) == [1.0]
    assert _call(make_format_reward(require_think=False, parser="lenient"), [text]) == [1.0]
    with pytest.raises(ValueError, match="parser"):
        make_raw_iou_reward(parser="strict")


def test_vtriune_mix_is_normalised_accuracy_plus_a_tenth_of_format() -> None:
    acc_w, fmt_w = reward_weights("vtriune")
    assert (acc_w, fmt_w) == pytest.approx((1 / 1.1, 0.1 / 1.1))
    assert acc_w * 1.0 + fmt_w * 1.0 == pytest.approx(1.0)  # a perfect answer scores 1, as in V-Triune
    assert reward_weights("sum", 1.0, 1.0) == (1.0, 1.0)  # VLM-R1: plain sum
    with pytest.raises(ValueError, match="mix"):
        reward_weights("product")
