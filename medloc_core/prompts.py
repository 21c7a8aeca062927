"""Prompt text for grounding queries and the answer format the rewards expect.

The instruction follows VLM-R1's REC template (reasoning in ``<think>`` tags, then the answer as JSON in
``<answer>`` tags). Box coordinates in prompts and answers are absolute pixels of the **model-input frame**
(the image after Qwen2.5-VL's resize), as Qwen2.5-VL emits them natively.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

THINK_INSTRUCTION = (
    "First output the thinking process in <think> </think> tags and then output the final answer in "
    '<answer> </answer> tags. Output the final answer in JSON format as {"bbox_2d": [x1, y1, x2, y2], '
    '"label": "..."}.'
)
ANSWER_INSTRUCTION = (
    'Output the final answer in <answer> </answer> tags in JSON format as {"bbox_2d": [x1, y1, x2, y2], '
    '"label": "..."}.'
)
ANSWER_STYLES = ("think", "answer")


def build_prompt_text(query: str, *, prior_knowledge: str | None = None, answer_style: str = "think") -> str:
    """The user-turn text: optional medical prior knowledge (VRFT-Aug), the query, the answer instruction."""
    if answer_style not in ANSWER_STYLES:
        raise ValueError(f"answer_style must be one of {ANSWER_STYLES}, got {answer_style!r}")
    instruction = THINK_INSTRUCTION if answer_style == "think" else ANSWER_INSTRUCTION
    parts = []
    if prior_knowledge:
        parts.append(f"Background: {prior_knowledge.strip()}")
    parts.append(query.strip())
    parts.append(instruction)
    return " ".join(parts)


def chat_messages(prompt_text: str) -> list[dict]:
    """One conversational user turn: the image placeholder first, then the text (TRL/Qwen chat format)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_text}]}]


def target_completion(
    box: Sequence[float], label: str, *, answer_style: str = "think", reasoning: str | None = None
) -> str:
    """The ideal completion for a ground-truth box in the input frame (used as the SFT warm-up target).

    Coordinates are rounded to integers, as Qwen2.5-VL writes them.
    """
    coords = [int(round(float(v))) for v in box]
    answer = json.dumps({"bbox_2d": coords, "label": label})
    body = f"<answer>{answer}</answer>"
    if answer_style == "think":
        thought = reasoning if reasoning is not None else f"The {label} is visible."
        body = f"<think>{thought}</think>{body}"
    return body
