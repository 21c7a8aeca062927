"""Greedy box prediction with a Qwen2.5-VL folder: image + prompt text -> completion -> pixel box.

Frames (``docs/architecture.md``): the model reads and writes boxes in the **model-input frame** (the image after
the processor's ``smart_resize`` with its ``min_pixels``/``max_pixels``). :class:`BoxPredictor` parses the
completion in that frame (``boxes.parse_box``) and maps it back to **original-image pixels** with
``boxes.Frame``; both are ``(x1, y1, x2, y2)``, x right, y down.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medloc_core.boxes import Frame, parse_box
from medloc_core.model.loading import _adapter_base, load_model, load_processor, pixel_bounds
from medloc_core.prompts import chat_messages

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 4


def _processor_frame_params(processor: Any) -> tuple[int, int, int, int]:
    """``(min_pixels, max_pixels, patch_size, merge_size)`` of a Qwen2/2.5-VL image processor."""

    ip = processor.image_processor
    return (*pixel_bounds(processor), int(ip.patch_size), int(ip.merge_size))


def generate(
    model: Any,
    processor: Any,
    chats: Sequence[Any],
    images: Sequence[Any],
    *,
    max_new_tokens: int,
    temperature: float | None = None,
) -> tuple[list[str], list[list[int]]]:
    """The one generate loop: a completion per (chat messages, PIL image), greedy (``temperature=None``) or
    sampled; returns the decoded completions (special tokens dropped) and each image's ``(t, h, w)`` patch grid
    (the frame the processor really used). Runs on the model's device, without gradients."""
    import torch

    texts = [processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    inputs = processor(text=texts, images=list(images), return_tensors="pt", padding=True)
    grids = inputs["image_grid_thw"].tolist()
    inputs = inputs.to(next(model.parameters()).device)
    sampling = (
        {"do_sample": False} if temperature is None else {"do_sample": True, "temperature": temperature}
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
    completions = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return completions, grids


def _load_processor_for(model_dir: str | os.PathLike) -> Any:

    try:
        return load_processor(model_dir)
    except (ValueError, OSError):
        path = Path(model_dir)
        # An adapter folder saved without its processor: the base model's processor applies.
        if path.is_dir() and (
            (path / "adapter_config.json").is_file() or (path / "mlae_config.json").is_file()
        ):
            return load_processor(_adapter_base(path))
        raise


class BoxPredictor:
    """A loaded model + processor that answers grounding prompts with greedy decoding.

    ``model_dir``: a Qwen2.5-VL folder or Hub id, or an adapter folder (see ``loading.load_model``).
    ``device``: ``"cpu"`` or a torch device string; float32 on CPU, bfloat16 on CUDA.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        device: str = "cpu",
        max_new_tokens: int = 64,
        dtype: str | None = None,
    ) -> None:

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model_dir = str(model_dir)
        self.device = device
        self.max_new_tokens = max_new_tokens
        if dtype is None:
            dtype = "float32" if device == "cpu" else "bfloat16"
        self.processor = _load_processor_for(model_dir)
        # Batched generation appends new tokens on the right, so prompts must be padded on the left.
        self.processor.tokenizer.padding_side = "left"
        self.model = load_model(model_dir, dtype=dtype)
        self.model.to(device)
        self.model.eval()
        self.min_pixels, self.max_pixels, self.patch_size, self.merge_size = _processor_frame_params(
            self.processor
        )

    def frame_for(self, width: int, height: int) -> Frame:
        """The original <-> model-input frame for an image of ``width x height`` pixels."""
        return Frame.for_qwen(
            width,
            height,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            factor=self.patch_size * self.merge_size,
        )

    def _generate(self, images: Sequence[Any], prompt_texts: Sequence[str]) -> tuple[list[str], list[Frame]]:
        chats = [chat_messages(p) for p in prompt_texts]
        completions, grids = generate(
            self.model, self.processor, chats, images, max_new_tokens=self.max_new_tokens
        )
        frames = []
        for img, (_, gh, gw) in zip(images, grids):
            frame = self.frame_for(img.width, img.height)
            seen = (int(gw) * self.patch_size, int(gh) * self.patch_size)
            if seen != (frame.input_w, frame.input_h):  # would silently mis-scale every box
                raise RuntimeError(
                    f"processor resized a {img.width}x{img.height} image to {seen[0]}x{seen[1]}, "
                    f"but smart_resize gives {frame.input_w}x{frame.input_h}"
                )
            frames.append(frame)
        return completions, frames

    def predict(
        self,
        images: Sequence[Any],
        prompt_texts: Sequence[str],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool | None = None,
    ) -> list[dict[str, Any]]:
        """One greedy answer per (image, prompt text).

        ``images``: PIL images (converted to RGB). ``prompt_texts``: the user-turn text
        (``prompts.build_prompt_text``). Returns one dict per image: ``completion`` (str), ``box_input``
        (model-input pixels or None), ``box_original`` (original-image pixels or None), ``input_size``
        ``(w, h)``. A progress bar is shown when there is more than one batch (``progress`` overrides).
        """
        from tqdm.auto import tqdm

        if len(images) != len(prompt_texts):
            raise ValueError(f"{len(images)} images but {len(prompt_texts)} prompt texts")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rgb = [img if img.mode == "RGB" else img.convert("RGB") for img in images]
        show = len(rgb) > batch_size if progress is None else progress
        results: list[dict[str, Any]] = []
        with tqdm(total=len(rgb), desc="predicting boxes", unit="img", disable=not show) as bar:
            for start in range(0, len(rgb), batch_size):
                batch = rgb[start : start + batch_size]
                completions, frames = self._generate(batch, prompt_texts[start : start + batch_size])
                for completion, frame in zip(completions, frames):
                    box_input = parse_box(completion)
                    results.append(
                        {
                            "completion": completion,
                            "box_input": box_input,
                            "box_original": None if box_input is None else frame.to_original(box_input),
                            "input_size": (frame.input_w, frame.input_h),
                        }
                    )
                bar.update(len(batch))
        return results
