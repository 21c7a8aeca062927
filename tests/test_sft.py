"""The SFT warm-up's early stop: it hands over once the check reaches the bar, and runs to the end otherwise."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from helpers import ANSWER_BOX, ANSWER_STYLE, IMAGE_SIZES, QUERY, make_prepared, random_image

from medloc_core.model import loading
from medloc_core.model.standin import build_tiny_qwen25vl
from medloc_core.training import sft
from medloc_core.training.rows import build_examples, train_rows
from medloc_core.training.warmup import greedy_hit_rate


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    base = build_tiny_qwen25vl(root / "model")
    processor = loading.load_processor(str(base))
    rows = train_rows(make_prepared(root / "data", n=10))
    examples = [sft.SFTExample(e["prompt"], e["image"], e["target"]) for e in build_examples(rows, "think")]
    return base, processor, examples


@pytest.mark.parametrize(
    ("scores", "stop_at", "steps_run", "stopped"),
    [
        ({2: 0.5, 4: 0.9, 6: 1.0}, 0.8, 4, True),  # stops at the first check that reaches the bar
        ({2: 0.1, 4: 0.2, 6: 0.3, 8: 0.4}, 0.8, 10, False),  # never ready: all steps run
    ],
)
def test_early_stop_on_the_check(setup, scores, stop_at, steps_run, stopped) -> None:
    base, processor, examples = setup
    model = loading.load_model(str(base), dtype="float32")
    seen: list[int] = []

    def check(step: int) -> float:
        seen.append(step)
        return scores[step]

    res = sft.sft_warmup(
        model,
        processor,
        examples,
        steps=10,
        batch_size=2,
        learning_rate=1e-3,
        progress=False,
        lr_schedule="cosine",
        stop_when=check,
        check_every=2,
        stop_at=stop_at,
    )
    assert res.steps == steps_run and len(res.losses) == steps_run and res.stopped_early is stopped
    assert [s for s, _ in res.checks] == seen == [s for s in sorted(scores) if s <= steps_run and s < 10]


def test_greedy_hit_rate_scores_parsed_boxes(answering_model_dir) -> None:  # noqa: F811
    """The answering model always says ANSWER_BOX: a hit where the truth is that box (or overlaps it enough)."""
    from medloc_core.prompts import build_prompt_text, chat_messages

    model = loading.load_model(answering_model_dir, dtype="float32")
    processor = loading.load_processor(answering_model_dir)
    messages = chat_messages(build_prompt_text(QUERY, answer_style=ANSWER_STYLE))
    x1, y1, x2, y2 = ANSWER_BOX
    truths = [ANSWER_BOX, (x1, y1, x2 + 28.0, y2), (60.0, 60.0, 90.0, 80.0)]  # IoU 1, 0.5, 0
    examples = [
        {"prompt": messages, "image": random_image(h, w, seed=i), "bbox": list(t)}
        for i, ((h, w), t) in enumerate(zip(IMAGE_SIZES, truths))
    ]
    hit = greedy_hit_rate
    assert hit(model, processor, examples, iou=0.5, max_new_tokens=40) == pytest.approx(2 / 3)
    assert hit(model, processor, examples, iou=0.6, max_new_tokens=40) == pytest.approx(1 / 3)
    assert hit(model, processor, examples, iou=0.5, max_new_tokens=4) == 0.0  # truncated: nothing parses
