"""GRPO reward functions with TRL's signature, and :func:`build_rewards`, the rewards and weights a run trains with
(the step record they fill: ``rewards/tracker.py``; MedGRPO's normalisation: ``rewards/medgrpo.py``).

Every reward function is called by TRL 1.16 as ``f(prompts=..., completions=..., completion_ids=...,
**dataset_columns, trainer_state=..., log_extra=..., log_metric=...)`` and returns one float per completion.
Completions are plain strings or chat lists ``[{"role": "assistant", "content": "..."}]``.
The ground-truth column ``bbox`` holds ``[x1, y1, x2, y2]`` in **model-input-frame pixels** (the frame the
model answers in, see ``medloc_core.boxes``); the optional column ``dataset`` names each sample's dataset.

TRL names log keys after ``__name__`` (``rewards/<name>/mean``), so every factory sets a meaningful one.
An unparseable answer scores 0 and is **counted**: the count goes to the :class:`RewardTracker` and, when
TRL passes ``log_metric``, to the ``parse_failure_rate`` metric (with ``iou/mean``).

Only numpy is imported here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medloc_core.boxes import PARSERS, iou, parse_box
from medloc_core.rewards.columns import RewardFunc, dataset_column
from medloc_core.rewards.medgrpo import make_medgrpo_normalized_reward
from medloc_core.rewards.tracker import RewardTracker

# Rewards read answers as VLM-R1 does unless told otherwise: what the policy is rewarded for is the paper's.
# "lenient" (boxes.parse_box's default) is for evaluation, predict and recipes that choose it.
DEFAULT_REWARD_PARSER = "vlmr1"

# VLM-R1's REC format reward, verbatim (vlm_modules/qwen_module.py, format_reward_rec), used with re.search.
VLMR1_FORMAT_PATTERN = r"<think>.*?</think>\s*<answer>.*?\{.*\[\d+,\s*\d+,\s*\d+,\s*\d+\].*\}.*?</answer>"
# The same without the think block, for answer-only prompts.
VLMR1_ANSWER_ONLY_PATTERN = r"<answer>.*?\{.*\[\d+,\s*\d+,\s*\d+,\s*\d+\].*\}.*?</answer>"

# Reward mixes: "sum" is TRL's weighted sum with the config's weights (VLM-R1: plain sum, weights 1);
# "vtriune" is V-Triune's (a·accuracy + f·format) / (a + f) with a = 1.0, f = 0.1 (reward_server/verify.py).
REWARD_MIXES = ("sum", "vtriune")
VTRIUNE_ACCURACY_WEIGHT = 1.0
VTRIUNE_FORMAT_WEIGHT = 0.1


def _check_parser(parser: str, name: str) -> None:
    if parser not in PARSERS:
        raise ValueError(f"{name}: parser must be one of {PARSERS}, got {parser!r}")


def reward_weights(mix: str, accuracy_weight: float = 1.0, format_weight: float = 1.0) -> tuple[float, float]:
    """TRL ``reward_weights`` ``(accuracy, format)`` for a mix. TRL sums ``w_i * r_i``, so V-Triune's
    normalised mix is the weights ``(a / (a + f), f / (a + f))``; ``sum`` returns the given weights."""
    if mix == "sum":
        return float(accuracy_weight), float(format_weight)
    if mix == "vtriune":
        total = VTRIUNE_ACCURACY_WEIGHT + VTRIUNE_FORMAT_WEIGHT
        return VTRIUNE_ACCURACY_WEIGHT / total, VTRIUNE_FORMAT_WEIGHT / total
    raise ValueError(f"reward_weights: mix must be one of {REWARD_MIXES}, got {mix!r}")


# ------------------------------------------------------------------------------------------- completions


def completion_text(completion: Any) -> str:
    """The text of one completion: a str, a message dict, or a chat list (the last assistant message).

    Message content may be a string or a list of parts (``{"type": "text", "text": ...}``).
    Raises TypeError for any other shape (a wiring bug, not a model output).
    """
    if isinstance(completion, str):
        return completion
    # fast path for TRL's shape: [{"role": "assistant", "content": "..."}]
    if type(completion) is list and len(completion) == 1 and type(completion[0]) is dict:
        content = completion[0].get("content", "")
        if isinstance(content, str):
            return content
    if isinstance(completion, Mapping):
        return _content_text(completion.get("content", ""))
    if isinstance(completion, Sequence):
        messages = [m for m in completion if isinstance(m, Mapping)]
        if len(messages) != len(completion):
            raise TypeError(f"completion list must hold message dicts, got {completion!r:.200}")
        if not messages:
            return ""
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
        return _content_text((assistant or messages)[-1].get("content", ""))
    raise TypeError(f"completion must be a str or a chat message list, got {type(completion).__name__}")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise TypeError(f"message content must be a str or a list of parts, got {type(content).__name__}")


# ---------------------------------------------------------------------------------------- format reward


def make_format_reward(
    require_think: bool = True,
    allow_floats: bool = True,
    partial_credit: bool = False,
    name: str = "format_reward",
    parser: str = DEFAULT_REWARD_PARSER,
) -> RewardFunc:
    """Format reward (docs/method.md §5): 1.0 or 0.0.

    ``parser="vlmr1"`` (default): VLM-R1's REC rule, ``re.search`` of :data:`VLMR1_FORMAT_PATTERN` (text
    before and after allowed; ``<think>...</think>``, whitespace, then ``<answer>`` holding ``{ ... [d, d, d,
    d] ... }`` with non-negative integers and no space after ``[``); without the think block when
    ``require_think`` is False. ``allow_floats`` does not apply.

    ``parser="lenient"``: the whole completion must be ``<think>...</think>`` (if ``require_think``) then an
    answer block with a JSON object ``{ ... [n, n, n, n] ... }`` and no ``<`` inside it; ``allow_floats``:
    numbers may be decimals or negative.

    ``partial_credit``: 0.5 instead of 0.0 when the layout is wrong but :func:`parse_box` (with ``parser``)
    still finds a box.
    """
    _check_parser(parser, "make_format_reward")
    if parser == "vlmr1":
        vlmr1 = re.compile(VLMR1_FORMAT_PATTERN if require_think else VLMR1_ANSWER_ONLY_PATTERN, re.DOTALL)

        def matches(text: str) -> bool:
            return vlmr1.search(text) is not None

    else:
        num = r"-?\d+(?:\.\d+)?" if allow_floats else r"\d+"
        box = rf"\[\s*{num}\s*,\s*{num}\s*,\s*{num}\s*,\s*{num}\s*\]"
        answer = rf"<answer>[^<]*?\{{[^<]*?{box}[^<]*?\}}[^<]*?</answer>"
        think = r"<think>.*?</think>\s*" if require_think else ""
        lenient = re.compile(rf"\s*{think}{answer}\s*", re.DOTALL)

        def matches(text: str) -> bool:
            return lenient.fullmatch(text) is not None

    def reward(prompts: Any, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        out = []
        for c in completions:
            text = completion_text(c)
            if matches(text):
                out.append(1.0)
            elif partial_credit and parse_box(text, parser=parser) is not None:
                out.append(0.5)
            else:
                out.append(0.0)
        return out

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = (
        f"Format reward (parser={parser}, require_think={require_think}, allow_floats={allow_floats}, "
        f"partial_credit={partial_credit})."
    )
    return reward


format_reward = make_format_reward()


# ------------------------------------------------------------------------------------------ IoU rewards


def _ground_truth(kwargs: Mapping[str, Any], n: int, name: str) -> list[tuple[float, float, float, float]]:
    if "bbox" not in kwargs:
        raise ValueError(
            f"{name}: the dataset has no 'bbox' column (TRL forwards dataset columns as keyword arguments; "
            "keep GRPOConfig.remove_unused_columns=False)"
        )
    boxes = kwargs["bbox"]
    if len(boxes) != n:
        raise ValueError(f"{name}: {n} completions but {len(boxes)} 'bbox' values")
    out = []
    for i, b in enumerate(boxes):
        try:
            values = tuple(float(v) for v in b)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: bbox row {i} is not 4 numbers: {b!r}") from None
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"{name}: bbox row {i} must be 4 finite numbers (x1, y1, x2, y2), got {b!r}")
        out.append(values)
    return out


def _score_ious(
    completions: Sequence[Any],
    kwargs: Mapping[str, Any],
    name: str,
    tracker: RewardTracker | None,
    *,
    need_ds: bool,
    parser: str,
) -> tuple[list[float], list[str | None] | None]:
    """Parse, compute IoU against ``bbox``, record in the tracker and log metrics. Unparseable -> IoU 0."""
    n = len(completions)
    gts = _ground_truth(kwargs, n, name)
    datasets = dataset_column(kwargs, n, name, need_ds)
    ious, failures, texts = [], 0, []
    for c, gt in zip(completions, gts):
        texts.append(completion_text(c))
        box = parse_box(texts[-1], parser=parser)
        if box is None:
            failures += 1
            ious.append(0.0)
        else:
            ious.append(iou(box, gt))
    if tracker is not None:
        tracker.record(name, ious, datasets, failures, texts)
    log_metric = kwargs.get("log_metric")
    if callable(log_metric) and n:
        log_metric("parse_failure_rate", failures / n)
        log_metric("iou/mean", float(np.mean(ious)))
    return ious, datasets


def _thresholds(schedule: Any, datasets: list[str | None] | None, n: int, name: str) -> list[float]:
    if _is_per_dataset(schedule):
        assert datasets is not None
        taus = [schedule.threshold_for(d) for d in datasets]
    else:
        taus = [schedule.threshold] * n
    if any(t is None for t in taus):
        raise ValueError(f"{name}: schedule {schedule.name!r} has no threshold; use make_raw_iou_reward")
    return [float(t) for t in taus]


def _is_per_dataset(schedule: Any) -> bool:
    return bool(getattr(schedule, "per_dataset", False))


def _hit(u: float, t: float, ge: bool) -> bool:
    return u >= t if ge else u > t


def _binary(u: float, t: float, ge: bool, w: float) -> float:
    return 1.0 if _hit(u, t, ge) else 0.0


def _thresholded_iou(u: float, t: float, ge: bool, w: float) -> float:
    return u if _hit(u, t, ge) else 0.0


def _hit_plus_iou(u: float, t: float, ge: bool, w: float) -> float:
    return (1.0 if _hit(u, t, ge) else 0.0) + w * u


def _gated_hit_plus_iou(u: float, t: float, ge: bool, w: float) -> float:
    return 1.0 + w * u if _hit(u, t, ge) else 0.0


# The accuracy reward of each thresholded schedule, per IoU ``u`` at threshold ``t`` (``w``: medloc_spread's IoU
# weight, whose score comes from its config: _spread_score); the binary hit for medloc, fixed and anything else.
_SCORES = {"vtriune": _thresholded_iou}


def _thresholded_reward(
    schedule: Any, tracker: RewardTracker | None, name: str, parser: str, score: Any, weight: float = 0.0
) -> RewardFunc:
    _check_parser(parser, name)
    per_dataset = _is_per_dataset(schedule)

    def reward(prompts: Any, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        ious, datasets = _score_ious(completions, kwargs, name, tracker, need_ds=per_dataset, parser=parser)
        taus = _thresholds(schedule, datasets, len(ious), name)
        ge = getattr(schedule, "ge", True)
        return [score(u, t, ge, weight) for u, t in zip(ious, taus)]

    reward.__name__ = reward.__qualname__ = name
    return reward


def make_iou_threshold_reward(
    schedule: Any,
    tracker: RewardTracker | None = None,
    name: str = "iou_accuracy_reward",
    parser: str = DEFAULT_REWARD_PARSER,
) -> RewardFunc:
    """Binary accuracy reward (docs/method.md §0): 1.0 if IoU >= tau else 0.0 (``>`` when ``schedule.ge`` is False).

    tau is read from ``schedule.threshold`` at call time (or ``schedule.threshold_for(dataset)`` for a
    :class:`~medloc_core.curriculum.scheduler.PerDatasetSchedule`), so a raise applies to the next batch.
    """
    return _thresholded_reward(schedule, tracker, name, parser, _binary)


def make_raw_iou_reward(
    tracker: RewardTracker | None = None, name: str = "raw_iou_reward", parser: str = DEFAULT_REWARD_PARSER
) -> RewardFunc:
    """Continuous IoU in [0, 1] as the reward (VLM-R1's current reward; MedLoc-R1's Raw-IoU baseline)."""
    _check_parser(parser, name)

    def reward(prompts: Any, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        ious, _ = _score_ious(completions, kwargs, name, tracker, need_ds=False, parser=parser)
        return ious

    reward.__name__ = reward.__qualname__ = name
    return reward


def make_vtriune_reward(
    schedule: Any,
    tracker: RewardTracker | None = None,
    name: str = "vtriune_iou_reward",
    parser: str = DEFAULT_REWARD_PARSER,
) -> RewardFunc:
    """V-Triune's single-box detection reward (docs/method.md §5): ``IoU * 1[IoU >= eps_t]`` with eps_t from the
    schedule (normally a :class:`~medloc_core.curriculum.scheduler.VTriuneSchedule`)."""
    return _thresholded_reward(schedule, tracker, name, parser, _thresholded_iou)


def make_spread_reward(
    schedule: Any,
    tracker: RewardTracker | None = None,
    name: str = "spread_iou_reward",
    parser: str = DEFAULT_REWARD_PARSER,
) -> RewardFunc:
    """``medloc_spread``'s accuracy reward (docs/curriculum.md) with tau read from the schedule at call time:
    ``1[IoU >= tau] + w * IoU``, or with ``gate_iou`` ``1[IoU >= tau] * (1 + w * IoU)`` (w: ``iou_weight``), so
    hits still differ by how tight the box is."""
    score, weight = _spread_score(schedule)
    return _thresholded_reward(schedule, tracker, name, parser, score, weight)


def accuracy_values(schedule: Any, ious: Sequence[float], taus: Sequence[float | None]) -> list[float]:
    """What the accuracy reward of ``schedule`` gives for each IoU at its threshold (the rewards above, without
    parsing): used to tell which groups have zero reward spread."""
    base = getattr(schedule, "name", "").split(":", 1)[-1]
    if base == "raw_iou":
        return [float(u) for u in ious]
    if any(t is None for t in taus):
        raise ValueError(f"accuracy_values: schedule {base!r} needs a threshold for every IoU")
    score, weight = _spread_score(schedule) if base == "medloc_spread" else (_SCORES.get(base, _binary), 0.0)
    ge = getattr(schedule, "ge", True)
    return [score(float(u), float(t), ge, weight) for u, t in zip(ious, taus)]  # type: ignore[arg-type]


def _spread_score(schedule: Any) -> tuple[Any, float]:
    """``medloc_spread``'s per-IoU score and its IoU weight, from the schedule's config."""
    inner = next(iter(schedule.schedules.values())) if _is_per_dataset(schedule) else schedule
    config = inner.config
    return (_gated_hit_plus_iou if config.gate_iou else _hit_plus_iou), float(config.iou_weight)


def make_reward_for_schedule(
    schedule: Any, tracker: RewardTracker | None = None, parser: str = DEFAULT_REWARD_PARSER
) -> RewardFunc:
    """The accuracy reward that matches a schedule: raw IoU for ``raw_iou``, V-Triune's for ``vtriune``,
    ``medloc_spread``'s for it, the binary ``IoU >= tau`` for ``medloc``, ``fixed`` and per-dataset schedules of
    those; answers read with ``parser``."""
    name = getattr(schedule, "name", "")
    base = name.split(":", 1)[-1]
    if base == "raw_iou":
        return make_raw_iou_reward(tracker, parser=parser)
    if base == "medloc_spread":
        return make_spread_reward(schedule, tracker, parser=parser)
    if base == "vtriune":
        return make_vtriune_reward(schedule, tracker, parser=parser)
    return make_iou_threshold_reward(schedule, tracker, parser=parser)


def build_rewards(
    schedule: Any,
    tracker: RewardTracker,
    *,
    parser: str,
    mix: str,
    accuracy_weight: float,
    format_weight: float,
    format_reward: bool,
    require_think: bool,
    format_partial_credit: bool,
    medgrpo_stats: Mapping[str, Sequence[float]] | None = None,
    medgrpo_k: float = 3.0,
) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions a GRPO run trains with and TRL's weights for them: the accuracy reward of
    ``schedule`` (through MedGRPO's per-dataset logistic when ``medgrpo_stats`` holds fitted quartiles), then
    the format reward when ``format_reward``; the weights follow ``mix`` (:func:`reward_weights`)."""
    accuracy = make_reward_for_schedule(schedule, tracker, parser=parser)
    if medgrpo_stats is not None:
        accuracy = make_medgrpo_normalized_reward(
            accuracy, {k: tuple(v) for k, v in medgrpo_stats.items()}, k=medgrpo_k
        )
    acc_w, fmt_w = reward_weights(mix, accuracy_weight, format_weight)
    funcs, weights = [accuracy], [acc_w]
    if format_reward:
        funcs.append(
            make_format_reward(
                require_think=require_think, partial_credit=format_partial_credit, parser=parser
            )
        )
        weights.append(fmt_w)
    return funcs, weights
