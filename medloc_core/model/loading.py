"""Load a vision-language model by name or path: ``load_model`` / ``load_processor`` for any Qwen2.5-VL folder
or Hub id (``Qwen/Qwen2.5-VL-3B-Instruct`` is the GPU default), optionally with a LoRA (peft) or MLAE adapter.

Without torchvision (CPU boxes: PyPI only has CUDA builds), ``AutoProcessor`` cannot load any Qwen2/2.5-VL
folder because the video processor needs torchvision. ``load_processor`` then falls back to
:class:`Qwen25VLImageOnlyProcessor`, which saves itself as ``Qwen2_5_VLProcessor`` so the same folder still
loads with plain ``AutoProcessor`` where torchvision works.

Images are resized by Qwen's ``smart_resize`` to multiples of 28 px with ``min_pixels <= h*w <= max_pixels``;
boxes in prompts and completions are absolute pixels of that resized (model-input) frame. The offline CPU
stand-in is built by ``medloc_core.model.standin``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from medloc_core.boxes import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS
from medloc_core.model.cpu_kernels import linear_patch_embed

logger = logging.getLogger(__name__)


DEFAULT_GPU_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"


# Qwen2.5-VL's special tokens, in Qwen's order (ids 0..13 here instead of 151643+).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


# Same string as transformers' qwen2 PRETOKENIZE_REGEX: Qwen2Tokenizer rebuilds its pre-tokenizer from it, so
# a BPE trained with any other pre-tokenizer would tokenize differently depending on the loader.
QWEN_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


# Qwen2.5-VL-Instruct's chat template (default system turn; image parts render as vision_start/pad/end).
QWEN25VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_fast_tokenizer(tokenizer_object: Any, *, model_max_length: int) -> Any:
    """A ``PreTrainedTokenizerFast`` around a ``tokenizers.Tokenizer`` set up as Qwen2.5-VL-Instruct's: ends a turn
    with ``<|im_end|>``, pads (on the left, for generation) with ``<|endoftext|>``, the Instruct chat template."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = QWEN25VL_CHAT_TEMPLATE
    return fast


def image_only_processor_class():
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class Qwen25VLImageOnlyProcessor(Qwen2_5_VLProcessor):
        """``Qwen2_5_VLProcessor`` without the video processor (which needs torchvision).

        ``ProcessorMixin`` derives its sub-processors from the ``__init__`` signature, so dropping the
        ``video_processor`` argument makes a valid image+text processor; chat templating, image-token
        expansion and ``mm_token_type_ids`` are inherited. It saves itself as ``Qwen2_5_VLProcessor`` (with a
        video-processor entry) so that ``AutoProcessor`` loads the folder on machines with torchvision.
        """

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            if tokenizer is None:
                raise ValueError("Qwen25VLImageOnlyProcessor needs a tokenizer")
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

        def __call__(self, images=None, text=None, **kwargs):
            # A GRPO batch repeats each (prompt, image) once per completion: process each distinct pair once and
            # copy its rows (padding is the same, the batch's longest text being among the distinct ones).
            distinct = _distinct_pairs(images, text) if kwargs.get("return_tensors") in ("pt", None) else None
            if distinct is None:
                return super().__call__(images=images, text=text, **kwargs)
            firsts, index = distinct
            out = super().__call__(
                images=[images[i] for i in firsts], text=[text[i] for i in firsts], **kwargs
            )
            repeated = _repeat_rows(out, index)
            return repeated if repeated is not None else super().__call__(images=images, text=text, **kwargs)

        def to_dict(self) -> dict[str, Any]:
            out = super().to_dict()
            out["processor_class"] = "Qwen2_5_VLProcessor"
            return out

        def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
            result = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
            _rewrite_processor_class(Path(save_directory), self.image_processor)
            return result

    return Qwen25VLImageOnlyProcessor


def _distinct_pairs(images: Any, text: Any) -> tuple[list[int], list[int]] | None:
    """For one image per text: (first row of each distinct (text, image) pair, its pair for every row), or None
    when the batch has another shape or nothing repeats."""
    if (
        not isinstance(text, list)
        or not isinstance(images, list)
        or len(text) != len(images)
        or len(text) < 2
    ):
        return None
    keys: dict[tuple, int] = {}
    firsts: list[int] = []
    index: list[int] = []
    for row, (words, imgs) in enumerate(zip(text, images)):
        img = imgs[0] if isinstance(imgs, list) and len(imgs) == 1 else imgs
        if not isinstance(words, str) or not hasattr(img, "tobytes"):
            return None
        key = (words, img.mode, img.size, img.tobytes())
        if key not in keys:
            keys[key] = len(firsts)
            firsts.append(row)
        index.append(keys[key])
    return (firsts, index) if len(firsts) < len(text) else None


def _repeat_rows(batch: Any, index: list[int]) -> Any:
    """Expand a processor output of the distinct rows to every row (``pixel_values`` by each image's patch rows),
    for tensors, numpy arrays and lists alike; None for a field of another kind."""
    import numpy as np
    import torch
    from transformers import BatchFeature

    out = {}
    for key, value in batch.items():
        if key == "pixel_values":
            sizes = [int(np.prod(np.asarray(g))) for g in batch["image_grid_thw"]]
            cuts = np.cumsum(sizes)[:-1].tolist()
            chunks = torch.split(value, sizes) if isinstance(value, torch.Tensor) else np.split(value, cuts)
            value = (
                torch.cat([chunks[i] for i in index])
                if isinstance(value, torch.Tensor)
                else np.concatenate([chunks[i] for i in index])
            )
        elif isinstance(value, (torch.Tensor, np.ndarray)):
            value = value[torch.tensor(index) if isinstance(value, torch.Tensor) else np.asarray(index)]
        elif isinstance(value, list):
            value = [value[i] for i in index]
        else:
            return None
        out[key] = value
    return BatchFeature(data=out)


def _rewrite_processor_class(folder: Path, image_processor: Any) -> None:
    """Make the saved JSON name ``Qwen2_5_VLProcessor`` and describe a video processor for AutoProcessor.

    An unknown ``processor_class`` makes ``AutoProcessor`` silently return a bare tokenizer, and a missing
    video-processor entry makes it fail on machines where the real processor class is available.
    """
    for name in ("tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if "processor_class" in data:
            data["processor_class"] = "Qwen2_5_VLProcessor"
        if name == "processor_config.json" and "video_processor" not in data:
            ip = getattr(image_processor, "to_dict", dict)()
            data["video_processor"] = {
                "video_processor_type": "Qwen2VLVideoProcessor",
                "patch_size": ip.get("patch_size", 14),
                "temporal_patch_size": ip.get("temporal_patch_size", 2),
                "merge_size": ip.get("merge_size", 2),
                "size": ip.get("size", {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS}),
                "image_mean": ip.get("image_mean"),
                "image_std": ip.get("image_std"),
            }
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# The stand-in builder lives in medloc_core.model.standin; these names stay importable from here (lazily, so that
# importing either module first works).
def pixel_bounds(processor: Any) -> tuple[int, int]:
    """``(min_pixels, max_pixels)`` of a Qwen2/2.5-VL processor's resize (its ``size`` dict or attributes)."""
    ip = processor.image_processor
    size = getattr(ip, "size", None) or {}
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    min_pixels = get("shortest_edge") or getattr(ip, "min_pixels", None)
    max_pixels = get("longest_edge") or getattr(ip, "max_pixels", None)
    if not min_pixels or not max_pixels:
        raise ValueError(f"the image processor {type(ip).__name__} has no min/max pixels (size={size!r})")
    return int(min_pixels), int(max_pixels)


def set_pixel_bounds(processor: Any, min_pixels: int, max_pixels: int) -> None:
    """Make the processor resize into ``min_pixels <= h*w <= max_pixels`` (the preprocessing's frame)."""
    processor.image_processor.size = {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}


def _is_processor(obj: Any) -> bool:
    from transformers.processing_utils import ProcessorMixin

    return isinstance(obj, ProcessorMixin) and getattr(obj, "image_processor", None) is not None


def load_processor(name_or_path: str | os.PathLike, **kwargs: Any):
    """Load the multimodal processor of a Qwen2.5-VL folder or Hub id.

    ``AutoProcessor`` first (the real path on GPU nodes with torchvision). If it fails, or silently returns a
    bare tokenizer, fall back to :class:`Qwen25VLImageOnlyProcessor` (image + text only). Raises ``ValueError``
    when neither yields a processor with an image processor.
    """
    from transformers import AutoProcessor

    source = str(name_or_path)
    auto_error: Exception | None = None
    try:
        proc = AutoProcessor.from_pretrained(source, **kwargs)
        if _is_processor(proc):
            return proc
        auto_error = TypeError(f"AutoProcessor returned {type(proc).__name__}, not a multimodal processor")
    except Exception as exc:  # torchvision missing -> video processor import/OSError
        auto_error = exc
    logger.debug("AutoProcessor failed for %s (%s); using the image-only processor", source, auto_error)
    cls = image_only_processor_class()
    try:
        proc = cls.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise ValueError(
            f"cannot load a Qwen2.5-VL processor from {source!r}: AutoProcessor said {auto_error!r}; "
            f"the image-only fallback said {exc!r}"
        ) from exc
    if not _is_processor(proc):
        raise ValueError(f"{source!r} holds no image processor (got {type(proc).__name__})")
    return proc


_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _torch_dtype(dtype: str):
    import torch

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: str = "auto",
    device_map: str | dict | None = None,
    adapter_dir: str | os.PathLike | None = None,
    merge_adapter: bool = True,
):
    """Load a Qwen2.5-VL (or any image-text-to-text) model, optionally with an adapter on top.

    ``name_or_path`` may itself be an adapter folder (``adapter_config.json`` from peft, or
    ``mlae_config.json`` from :mod:`medloc_core.model.mlae`); its base model is then loaded from the path recorded in
    the adapter config. ``adapter_dir`` adds an adapter explicitly. With ``merge_adapter`` (default) the adapter
    is folded into the base weights, so the result is a plain model for inference.
    """
    from transformers import AutoModelForImageTextToText

    path = Path(name_or_path)
    if adapter_dir is None and path.is_dir() and not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file() or (path / "mlae_config.json").is_file():
            adapter_dir, name_or_path = path, _adapter_base(path)
    model = AutoModelForImageTextToText.from_pretrained(
        str(name_or_path), dtype=_torch_dtype(dtype), device_map=device_map
    )
    if adapter_dir is not None:
        model = attach_adapter(model, adapter_dir, merge=merge_adapter)

    linear_patch_embed(model)  # exact; the 3-D convolution it replaces dominated the stand-in's vision cost
    model.eval()
    return model


def _adapter_base(adapter_dir: Path) -> str:
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("mlae_config.json", "base_model")):
        cfg = adapter_dir / name
        if cfg.is_file():
            base = json.loads(cfg.read_text(encoding="utf-8")).get(key)
            if not base:
                raise ValueError(f"{cfg}: field {key!r} (the base model) is missing")
            return str(base)
    raise ValueError(f"{adapter_dir}: no adapter_config.json or mlae_config.json")


def attach_adapter(model, adapter_dir: str | os.PathLike, *, merge: bool = True):
    """Put a saved LoRA (peft) or MLAE adapter from ``adapter_dir`` on ``model``; merge it when asked."""
    adapter_dir = Path(adapter_dir)
    if (adapter_dir / "mlae_config.json").is_file():
        from medloc_core.model import mlae  # lazy: imports torch

        mlae.load_mlae(model, adapter_dir)
        if merge:
            mlae.merge_mlae(model)
        return model
    if (adapter_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
        return peft_model.merge_and_unload() if merge else peft_model
    raise ValueError(f"{adapter_dir}: not an adapter folder (no adapter_config.json or mlae_config.json)")
