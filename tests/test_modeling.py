"""The tiny offline Qwen2.5-VL: deterministic build, offline reload, tokenizer, processor fallback."""

from __future__ import annotations

import hashlib
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from medloc_core import prompts  # noqa: E402
from medloc_core.model import loading
from medloc_core.model.standin import (
    NUMBER_TOKEN_MAX,
    TINY_SIZES,
    build_tiny_qwen25vl,
    build_tiny_tokenizer,
    ensure_tiny_model,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny") / "model")


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_build_is_deterministic_and_small(tiny, tmp_path) -> None:
    again = build_tiny_qwen25vl(tmp_path / "again")
    assert _hashes(again) == _hashes(tiny)
    assert (tiny / "model.safetensors").stat().st_size < 1_000_000
    other_seed = build_tiny_qwen25vl(tmp_path / "seed1", seed=1)
    assert _hashes(other_seed)["model.safetensors"] != _hashes(tiny)["model.safetensors"]


def test_reloads_offline_with_automodel_and_processor(tiny) -> None:
    from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    model = AutoModelForImageTextToText.from_pretrained(tiny)
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    n_params = sum(p.numel() for p in model.parameters())
    assert 150_000 < n_params < 250_000
    proc = loading.load_processor(tiny)
    tok = proc.tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.padding_side == "left"
    ids = {t: tok.convert_tokens_to_ids(t) for t in loading.QWEN_SPECIAL_TOKENS}
    assert list(ids.values()) == list(range(14))
    assert model.config.image_token_id == ids["<|image_pad|>"]
    assert model.config.vision_start_token_id == ids["<|vision_start|>"]
    # Every loader tokenizes identically (Qwen's pre-tokenizer was used for training), digits one by one.
    text = prompts.target_completion((12, 345, 67, 890), "bright blob")
    auto_ids = AutoTokenizer.from_pretrained(tiny)(text)["input_ids"]
    assert auto_ids == tok(text)["input_ids"]
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]
    assert tok.decode(tok(text)["input_ids"]) == text
    # The whole target fits the CPU default max_completion_length of 48 tokens.
    assert len(tok(text)["input_ids"]) + 1 <= 48

    saved = json.loads((tiny / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2_5_VLProcessor"
    assert saved["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert json.loads((tiny / "tokenizer_config.json").read_text()).get("processor_class") in (
        None,
        "Qwen2_5_VLProcessor",
    )


def test_processor_expands_image_tokens_and_model_runs(tiny) -> None:
    proc = loading.load_processor(tiny)
    model = loading.load_model(tiny, dtype="float32")
    msgs = prompts.chat_messages(prompts.build_prompt_text("Locate the lesion."))
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>Locate the lesion." in text
    assert text.endswith("<|im_start|>assistant\n")
    enc = proc(text=[text], images=[Image.new("RGB", (112, 112), "gray")], return_tensors="pt")
    # 112x112 -> 8x8 patches of 14 px -> 2x2 merge -> 16 image tokens.
    assert enc["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 16
    big = proc(text=[text], images=[Image.new("RGB", (512, 512))], return_tensors="pt")
    assert big["image_grid_thw"].tolist() == [[1, 8, 8]]  # max_pixels 112*112 caps the input frame
    with torch.no_grad():
        out = model(**enc)
    assert out.logits.shape == (1, enc["input_ids"].shape[1], len(proc.tokenizer))


def test_load_processor_guards_bare_tokenizer(tiny, monkeypatch) -> None:
    from transformers import AutoProcessor, AutoTokenizer
    from transformers.processing_utils import ProcessorMixin

    bare = AutoTokenizer.from_pretrained(tiny)
    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda *a, **k: bare)
    proc = loading.load_processor(tiny)
    assert isinstance(proc, ProcessorMixin) and proc.image_processor is not None


def test_load_processor_error_names_the_folder(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        loading.load_processor(tmp_path / "empty")


def test_load_model_dtype(tiny) -> None:
    model = loading.load_model(tiny, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not model.training
    with pytest.raises(ValueError, match="dtype"):
        loading.load_model(tiny, dtype="int8")


def test_ensure_tiny_model_builds_once(tmp_path) -> None:
    first = ensure_tiny_model(tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    second = ensure_tiny_model(tmp_path)
    assert second == first and (second / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_build_rejects_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="size"):
        build_tiny_qwen25vl(tmp_path, size="huge")
    with pytest.raises(ValueError, match="min_pixels"):
        build_tiny_qwen25vl(tmp_path, min_pixels=100, max_pixels=10)


@pytest.fixture(scope="module")
def grounder(tmp_path_factory):
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("grounder") / "model", size="grounder")


def test_grounder_writes_each_coordinate_as_one_token(grounder) -> None:
    from transformers import AutoTokenizer

    from medloc_core.boxes import parse_box

    tok = AutoTokenizer.from_pretrained(grounder)
    assert type(tok).__name__ != "Qwen2Tokenizer"  # would rebuild the pre-tokenizer and split the digits
    for n in range(NUMBER_TOKEN_MAX + 1):
        assert tok.tokenize(f" {n}")[-1] == str(n), n
    target = prompts.target_completion((7, 30, 111, 84), "skin lesion", answer_style="answer")
    tokens = tok.tokenize(target)
    for value in ("7", "30", "111", "84"):
        assert value in tokens
    assert tok.decode(tok(target)["input_ids"]) == target  # round trip, so parse_box sees the real text
    assert tuple(parse_box(tok.decode(tok(target)["input_ids"]))) == (7, 30, 111, 84)
    # the plumbing model keeps Qwen's one token per digit
    tiny_tok = build_tiny_tokenizer(0)
    assert tiny_tok.tokenize(" 111")[-3:] == ["1", "1", "1"]


def test_grounder_rope_lets_the_language_model_see_image_columns(grounder) -> None:
    """At Qwen's rope theta 1e6 and head_dim 16 the width section of M-RoPE turns < 1e-3 rad across a 4-token-wide
    image; the stand-in's theta 10 turns it by > 0.3 rad per visual token."""
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(grounder).text_config
    rope = text.rope_parameters
    head_dim = text.hidden_size // text.num_attention_heads
    inv_freq = [rope["rope_theta"] ** (-2 * i / head_dim) for i in range(head_dim // 2)]
    t, h, w = rope["mrope_section"]
    assert t + h + w == head_dim // 2
    assert max(inv_freq[t + h :]) * 3 > 0.3  # across one row of 4 visual tokens, the width phase moves
    assert rope["rope_theta"] == TINY_SIZES["grounder"]["rope_theta"]
