"""One way to turn an image file into the RGB pixels the model sees, from ingest to training to prediction.

:func:`to_rgb` applies the EXIF orientation (so the pixel frame that boxes are written in is the one a viewer
shows) and scales high-bit-depth grey images (16-bit PNG/TIFF, 32-bit integer or float) to 8 bits by their own
maximum instead of letting ``convert("RGB")`` clip them to white. Every consumer goes through
:func:`load_rgb` / :func:`to_rgb`, so the width and height that ingest records are the ones training,
evaluation and ``predict`` use.

Only Pillow and numpy are imported.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medloc_core import masking

# Qwen2.5-VL's smart_resize refuses aspect ratios over 200 (preprocessing would fail for the whole dataset); a
# side of a few pixels holds no finding. Such images are quarantined at ingest.
MAX_ASPECT_RATIO = 200
MIN_IMAGE_SIDE_PX = 8
# Refuse to decode more than this many pixels from untrusted input (serving, predict): 16k x 16k.
MAX_IMAGE_PIXELS = 16_384 * 16_384

_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageError(ValueError):
    """An image that cannot be used: unreadable, too large or degenerate. The message is one line."""


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``image`` with its EXIF orientation applied (width/height as displayed)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _HIGH_BIT_MODES:
        arr = np.asarray(image, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        low = float(finite.min()) if finite.size else 0.0
        high = float(finite.max()) if finite.size else 0.0
        low = min(low, 0.0)  # keep 0 black when the data are non-negative
        scale = 255.0 / (high - low) if high > low else 0.0
        arr = np.nan_to_num((arr - low) * scale, nan=0.0, posinf=255.0, neginf=0.0)
        image = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` after the EXIF orientation, without transposing the pixels."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: Pillow's exif_transpose ignores it too
        orientation = 1
    width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def check_size(width: int, height: int) -> str | None:
    """Why an image of ``width`` x ``height`` pixels cannot be used (one line), or None when it can."""
    if min(width, height) < MIN_IMAGE_SIDE_PX:
        return f"degenerate image {width}x{height}: a side is under {MIN_IMAGE_SIDE_PX} px"
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return f"degenerate image {width}x{height}: aspect ratio over {MAX_ASPECT_RATIO}"
    return None


def load_rgb(source: str | os.PathLike | bytes, *, max_pixels: int | None = None) -> Image.Image:
    """Decode a file path or raw bytes into oriented 8-bit RGB. Raises :class:`ImageError` (one line) for a
    missing, unreadable or non-image file, or one over ``max_pixels`` (checked before decoding the pixels)."""
    if isinstance(source, str):
        source = masking.reveal(source)  # a path recorded with a ${secret:NAME} placeholder (masking.py)
    name = "image bytes" if isinstance(source, bytes | bytearray) else str(source)
    try:
        fh: Any = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")
    except OSError as exc:
        raise ImageError(f"cannot read {name}: {exc.strerror or exc}") from None
    with fh:
        try:
            with Image.open(fh) as image:
                if max_pixels is not None and image.width * image.height > max_pixels:
                    raise ImageError(
                        f"{name} is {image.width}x{image.height} pixels, over the limit of {max_pixels}"
                    )
                image.load()
                return to_rgb(image)
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(f"{name} is not a readable image (not an image format Pillow knows)") from None
        except Exception as exc:  # Pillow raises many types for corrupt data
            detail = " ".join(str(exc).split())[:120]
            raise ImageError(f"{name} is not a readable image ({type(exc).__name__}: {detail})") from None
