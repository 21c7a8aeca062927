"""The offline CPU stand-in: a randomly initialised, deterministic Qwen2.5-VL (the production architecture
class, so CPU tests exercise the GPU code path) with a byte-level BPE tokenizer trained here on prompt-like text
(Qwen's special tokens, Qwen's pre-tokenizer, Qwen's chat template). ``TINY_SIZES`` lists the sizes; ``grounder``
is the one that learns to localize (see the comment there).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

from medloc_core import prompts
from medloc_core.model.loading import (
    DEFAULT_SYSTEM_PROMPT,
    QWEN25VL_CHAT_TEMPLATE,
    QWEN_PRETOKENIZE_REGEX,
    QWEN_SPECIAL_TOKENS,
    image_only_processor_class,
    qwen_fast_tokenizer,
)

logger = logging.getLogger(__name__)


TINY_MIN_PIXELS = 56 * 56


TINY_MAX_PIXELS = 112 * 112


TINY_VOCAB_SIZE = 640


# Size knobs of the offline model. "tiny" is the plumbing-test model (~0.2 M params); "small" ~3.7 M.
# "grounder" is the CPU stand-in that learns to localize (the embedded default), engineered for that:
# * rope_theta 10 instead of Qwen's 1e6. Qwen2.5-VL's M-RoPE gives the height and width of an image token the
#   *lowest* rotary frequencies of a head; at head_dim 16 and theta 1e6 the width section turns by < 1e-3 rad
#   across the whole image, so the language model cannot tell one column of visual tokens from another. At
#   theta 10 with head_dim 32 the height/width sections turn by 0.1-0.6 rad per visual token.
# * number_tokens: the pre-tokenizer keeps runs of up to 3 digits together and the BPE learns every integer
#   0..NUMBER_TOKEN_MAX as one token, so each box coordinate is one classification, not three dependent ones.
TINY_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden": 64, "inter": 128, "layers": 2, "heads": 4, "kv": 2, "v_hidden": 32, "v_depth": 2},
    "small": {"hidden": 256, "inter": 512, "layers": 4, "heads": 4, "kv": 2, "v_hidden": 128, "v_depth": 4},
    "grounder": {
        "hidden": 128,
        "inter": 256,
        "layers": 4,
        "heads": 4,
        "kv": 2,
        "v_hidden": 64,
        "v_depth": 2,
        "rope_theta": 10.0,
        "number_tokens": True,
    },
}


NUMBER_TOKEN_MAX = 255


# Like QWEN_PRETOKENIZE_REGEX, but digits stay together in runs of up to three (GPT-4-style).
NUMBER_PRETOKENIZE_REGEX = QWEN_PRETOKENIZE_REGEX.replace(r"|\p{N}|", r"|\p{N}{1,3}|")


# Vocabulary of the tokenizer corpus: words likely in grounding queries and labels (synthetic + medical).
_QUERY_TEMPLATES = (
    "Locate the {label} in the image.",
    "Find the {label}.",
    "Where is the {label}?",
    "Please locate the {label} in this {modality} image.",
    "Detect the {label} in the {modality} image and give its bounding box.",
    "Outline the region of the {label}.",
    "Give the bounding box of the {label}.",
)


_LABELS = (
    "lesion",
    "skin lesion",
    "pigmented lesion",
    "melanoma",
    "nevus",
    "nodule",
    "thyroid nodule",
    "tumor",
    "mass",
    "calcaneus",
    "heel",
    "bone",
    "fracture",
    "cyst",
    "polyp",
    "blob",
    "bright blob",
    "bright spot",
    "dark spot",
    "ellipse",
    "bright ellipse",
    "circle",
    "square",
    "rectangle",
    "triangle",
    "object",
    "region",
    "structure",
    "finding",
    "abnormality",
)


_MODALITIES = ("dermoscopy", "ultrasound", "X-ray", "CT", "MRI", "synthetic", "medical", "grayscale")


_PRIOR_KNOWLEDGE = (
    "A lesion is a region of abnormal tissue; it often looks brighter or darker than its surroundings.",
    "Thyroid nodules appear as round hypoechoic regions in ultrasound images.",
    "Skin lesions have irregular borders and uneven color in dermoscopy.",
    "The target is a small bright elliptical region with blurred boundaries on a noisy background.",
)


_FILLER_WORDS = (
    "the image shows a small bright region near the center left right top bottom corner of the picture "
    "with low contrast and blurred boundaries so the box covers it I think it is visible here"
)


def _tokenizer_corpus(seed: int, number_tokens: bool = False) -> list[str]:
    """Deterministic training text: prompt instructions, queries, chat turns, JSON boxes and digits.

    With ``number_tokens`` every integer 0..NUMBER_TOKEN_MAX also appears often enough to become one token.
    """
    rng = random.Random(seed)
    lines: list[str] = []
    if number_tokens:
        for _ in range(200):
            lines.append(" ".join(str(i) for i in range(NUMBER_TOKEN_MAX + 1)))
            lines.append(", ".join(str(i) for i in range(NUMBER_TOKEN_MAX + 1)))
    for _ in range(40):
        lines += [prompts.THINK_INSTRUCTION, prompts.ANSWER_INSTRUCTION, DEFAULT_SYSTEM_PROMPT]
    for _ in range(3000):
        label = rng.choice(_LABELS)
        query = rng.choice(_QUERY_TEMPLATES).format(label=label, modality=rng.choice(_MODALITIES))
        style = rng.choice(prompts.ANSWER_STYLES)
        prior = rng.choice(_PRIOR_KNOWLEDGE) if rng.random() < 0.2 else None
        x1, y1 = rng.randint(0, 400), rng.randint(0, 400)
        box = (x1, y1, x1 + rng.randint(1, 200), y1 + rng.randint(1, 200))
        lines.append(prompts.build_prompt_text(query, prior_knowledge=prior, answer_style=style))
        lines.append(prompts.target_completion(box, label, answer_style=style))
        lines.append(json.dumps({"bbox_2d": list(box), "label": label}))
        lines.append(" ".join(str(rng.randint(0, 1000)) for _ in range(8)))
    words = _FILLER_WORDS.split()
    for _ in range(500):
        lines.append(" ".join(rng.choice(words) for _ in range(12)))
    for _ in range(200):
        lines.append(
            f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>"
        )
        lines.append("<|im_end|>\n<|im_start|>assistant\n")
    return lines


def build_tiny_tokenizer(seed: int = 0, vocab_size: int = TINY_VOCAB_SIZE, *, number_tokens: bool = False):
    """Train a Qwen-compatible byte-level BPE on :func:`_tokenizer_corpus` and wrap it for transformers.

    ``number_tokens``: digits are pre-tokenized in runs of up to three and every integer 0..NUMBER_TOKEN_MAX is
    one token (the vocabulary grows by about 300 entries; checked after training). Otherwise one token per digit,
    as in Qwen. Returns a ``PreTrainedTokenizerFast`` with eos ``<|im_end|>``, pad ``<|endoftext|>``, left padding and the
    Qwen2.5-VL chat template.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(NUMBER_PRETOKENIZE_REGEX if number_tokens else QWEN_PRETOKENIZE_REGEX),
                behavior="isolated",
                invert=False,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(seed, number_tokens), trainer)
    if number_tokens:
        split = [n for n in range(NUMBER_TOKEN_MAX + 1) if len(tok.encode(f" {n}").ids) != 2]
        if split:
            raise ValueError(f"vocab_size={vocab_size} is too small: {split[:5]}... are not one token each")
    return qwen_fast_tokenizer(tok, model_max_length=32768)


def build_tiny_qwen25vl(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    size: str = "tiny",
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
) -> Path:
    """Write a randomly initialised Qwen2.5-VL, its tokenizer and processor to ``out_dir``; return the path.

    Deterministic for a given ``seed``/``size``. ``tiny`` is ~0.2 M parameters (< 1 MB of fp32 safetensors);
    ``small`` is ~3.7 M. The folder reloads offline with ``AutoModelForImageTextToText`` and
    :func:`load_processor`. Images are resized to ``min_pixels <= h*w <= max_pixels`` (multiples of 28 px).
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if size not in TINY_SIZES:
        raise ValueError(f"size must be one of {sorted(TINY_SIZES)}, got {size!r}")
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    knobs = TINY_SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    number_tokens = bool(knobs.get("number_tokens", False))
    vocab = TINY_VOCAB_SIZE + (NUMBER_TOKEN_MAX + 1 + 64 if number_tokens else 0)
    tokenizer = build_tiny_tokenizer(seed, vocab, number_tokens=number_tokens)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    pad_id, eos_id = ids["<|endoftext|>"], ids["<|im_end|>"]
    head_dim = knobs["hidden"] // knobs["heads"]
    # mrope sections must sum to head_dim / 2 (temporal, height, width).
    half = head_dim // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": knobs["hidden"],
            "intermediate_size": knobs["inter"],
            "num_hidden_layers": knobs["layers"],
            "num_attention_heads": knobs["heads"],
            "num_key_value_heads": knobs["kv"],
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": float(knobs.get("rope_theta", 1e6)),
                "mrope_section": mrope,
            },
            "bos_token_id": pad_id,
            "eos_token_id": eos_id,
            "pad_token_id": pad_id,
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": knobs["v_depth"],
            "hidden_size": knobs["v_hidden"],
            "intermediate_size": 2 * knobs["v_hidden"],
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "out_hidden_size": knobs["hidden"],
            "fullatt_block_indexes": [knobs["v_depth"] - 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, bos_token_id=pad_id, do_sample=False
    )
    model.save_pretrained(out)

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    processor = image_only_processor_class()(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN25VL_CHAT_TEMPLATE
    )
    processor.save_pretrained(out)
    (out / "medloc_tiny_model.json").write_text(
        json.dumps({"seed": seed, "size": size, "min_pixels": min_pixels, "max_pixels": max_pixels}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    return out


def ensure_tiny_model(
    cache_dir: str | os.PathLike,
    *,
    seed: int = 0,
    size: str = "tiny",
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
) -> Path:
    """Return ``cache_dir/<size>-s<seed>-<min>-<max>``, building the tiny model there once if it is missing."""
    folder = Path(cache_dir) / f"qwen25vl-{size}-s{seed}-{min_pixels}-{max_pixels}"
    marker = folder / "medloc_tiny_model.json"
    if marker.is_file() and (folder / "config.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    build_tiny_qwen25vl(tmp, seed=seed, size=size, min_pixels=min_pixels, max_pixels=max_pixels)
    if folder.exists():  # a concurrent build finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return folder
    tmp.rename(folder)
    return folder
