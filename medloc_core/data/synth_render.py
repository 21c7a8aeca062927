"""Pixels of the synthetic datasets: dermoscopy-, ultrasound- and X-ray-like images with their target masks.

Each ``render_*`` is a pure function of its seeds, the image size in pixels and a :class:`Difficulty`; it returns
``(image, mask)`` as numpy arrays (``mask`` boolean, same height and width). ``data.synth`` writes them in the real
datasets' layouts. Boxes (:func:`mask_extent`) are ``[x1, y1, x2, y2]`` original pixels, exclusive end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # 8-connectivity for ndimage.label


MIN_TARGET_PX = 80  # well above the 50 px speck limit of the mask readers


@dataclass(frozen=True)
class Difficulty:
    """``target_scale``: size multiplier (1 = typical); ``contrast``: 1 = full, 0.2 = faint;
    ``blur``: Gaussian sigma in pixels applied to the rendered image."""

    target_scale: float = 1.0
    contrast: float = 1.0
    blur: float = 0.0

    def __post_init__(self) -> None:
        if not self.target_scale > 0 or not 0 < self.contrast <= 1 or self.blur < 0:
            raise ValueError(
                f"invalid difficulty {self}: need target_scale > 0, 0 < contrast <= 1, blur >= 0"
            )


def mask_extent(mask: np.ndarray) -> list[float]:
    """``[min_col, min_row, max_col + 1, max_row + 1]`` of the foreground."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _lowfreq(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.random((max(2, cells * height // width), cells)).astype(np.float32)
    up = Image.fromarray(grid, mode="F").resize((width, height), Image.BICUBIC)
    return np.clip(np.asarray(up), 0.0, 1.0)


def _blob(
    height: int,
    width: int,
    cx: float,
    cy: float,
    radius: float,
    coeffs: np.ndarray,
    phases: np.ndarray,
    aspect: float,
    angle: float,
) -> np.ndarray:
    """Star-shaped region r(theta) = radius * (1 + sum_k a_k cos(k theta + phi_k)), stretched and rotated."""
    reach = radius * (1 + np.abs(coeffs).sum()) * max(aspect, 1 / aspect) + 2
    x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 1)
    y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    cos, sin = math.cos(angle), math.sin(angle)
    u = (dx * cos + dy * sin) / math.sqrt(aspect)
    v = (-dx * sin + dy * cos) * math.sqrt(aspect)
    theta = np.arctan2(v, u)
    r = np.full_like(theta, radius)
    for k, (a, phi) in enumerate(zip(coeffs, phases), start=2):
        r += radius * a * np.cos(k * theta + phi)
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = np.hypot(u, v) <= r
    return _largest_component(mask)


def _fit_radius(radius: float, height: int, width: int) -> float:
    return float(np.clip(radius, math.sqrt(MIN_TARGET_PX / math.pi) + 1, 0.3 * min(height, width)))


_SKIN = np.array([[0.90, 0.74, 0.64], [0.84, 0.64, 0.52], [0.94, 0.80, 0.70], [0.74, 0.54, 0.42]], np.float32)


_LIGHT_BROWN = np.array([0.62, 0.42, 0.28], np.float32)


_DARK_BROWN = np.array([0.24, 0.14, 0.09], np.float32)


def render_dermoscopy(
    lesion_seed: tuple[int, ...], view_seed: tuple[int, ...], width: int, height: int, difficulty: Difficulty
) -> tuple[np.ndarray, np.ndarray]:
    """One dermoscopy-like RGB image (uint8, HxWx3) and its lesion mask (bool). The lesion's shape and
    colours come from ``lesion_seed``; position, pose, skin and artefacts from ``view_seed``."""
    lrng, rng = np.random.default_rng(lesion_seed), np.random.default_rng(view_seed)
    base_radius = lrng.uniform(0.10, 0.24) * min(width, height)
    irregular = lrng.uniform(0.02, 0.10)
    coeffs = lrng.uniform(0, 1, 5) * irregular / np.arange(1, 6)
    phases = lrng.uniform(0, 2 * math.pi, 5)
    aspect = lrng.uniform(0.7, 1.4)
    darkness = lrng.uniform(0.5, 1.0)
    radius = _fit_radius(base_radius * difficulty.target_scale * rng.uniform(0.9, 1.1), height, width)
    reach = radius * (1 + coeffs.sum()) * max(aspect, 1 / aspect) + 4
    cx = rng.uniform(min(reach, width / 2), max(width - reach, width / 2))
    cy = rng.uniform(min(reach, height / 2), max(height - reach, height / 2))
    mask = _blob(
        height, width, cx, cy, radius, coeffs, phases, aspect, lrng.uniform(0, math.pi) + rng.normal(0, 0.2)
    )

    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.95, 1.05)
    light = _lowfreq(rng, height, width, 6)
    fine = _lowfreq(rng, height, width, 60)
    background = skin[None, None, :] * (0.9 + 0.15 * light[..., None] + 0.05 * fine[..., None])
    depth = ndimage.distance_transform_edt(mask)
    depth = np.sqrt(depth / max(depth.max(), 1.0))
    texture = _lowfreq(rng, height, width, 40)
    shade = np.clip(darkness * depth * (0.7 + 0.5 * texture), 0, 1)[..., None]
    lesion = _LIGHT_BROWN + (_DARK_BROWN - _LIGHT_BROWN) * shade
    lesion = background + difficulty.contrast * (lesion - background)
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), 1.5)[..., None]
    image = background * (1 - alpha) + lesion * alpha
    yy, xx = np.mgrid[0:height, 0:width]
    corner = np.hypot((xx - width / 2) / (width / 2), (yy - height / 2) / (height / 2))
    image *= np.clip(1.0 - 1.5 * np.clip(corner - rng.uniform(1.05, 1.3), 0, None), 0.05, 1)[..., None]
    if difficulty.blur > 0:
        image = ndimage.gaussian_filter(image, (difficulty.blur, difficulty.blur, 0))
    out = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(out)
    for _ in range(rng.integers(0, 5)):  # hairs
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        heading = rng.uniform(0, 2 * math.pi)
        points = []
        for _ in range(12):
            points.append((x, y))
            heading += rng.normal(0, 0.15)
            x += math.cos(heading) * width / 25
            y += math.sin(heading) * width / 25
        draw.line(points, fill=(40, 28, 22), width=int(rng.integers(1, 3)))
    return np.asarray(out), mask


def render_ultrasound(
    seed: tuple[int, ...], width: int, height: int, difficulty: Difficulty
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A B-mode-like thyroid image (uint8 HxW) and one bool mask per nodule (1, sometimes 2)."""
    rng = np.random.default_rng(seed)
    echo = 0.55 + 0.2 * (_lowfreq(rng, height, width, 8) - 0.5)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for k in range(3):  # skin / muscle layers near the probe
        band = abs(yy - height * (0.04 + 0.05 * k + rng.uniform(-0.01, 0.01))) < height * 0.012
        echo = np.where(band, echo * rng.uniform(1.3, 1.7), echo)
    lobe = ((xx - width * 0.5) / (width * 0.42)) ** 2 + ((yy - height * 0.55) / (height * 0.36)) ** 2 <= 1
    echo = np.where(lobe, echo * 1.15, echo * 0.8)
    n_nodules = 2 if rng.random() < 0.15 else 1
    masks: list[np.ndarray] = []
    taken = np.zeros((height, width), dtype=bool)
    for _ in range(n_nodules):
        for _attempt in range(20):
            second = 0.7 if masks else 1.0
            radius = rng.uniform(0.07, 0.18) * min(width, height) * difficulty.target_scale * second
            radius = _fit_radius(radius, height, width)
            coeffs = rng.uniform(0, 1, 5) * 0.05 / np.arange(1, 6)
            reach = radius * 1.4 * 1.1 + 4
            cx = rng.uniform(min(reach, width / 2), max(width - reach, width / 2))
            cy = rng.uniform(min(reach + 0.15 * height, height / 2), max(height - reach, height / 2))
            blob = _blob(
                height,
                width,
                cx,
                cy,
                radius,
                coeffs,
                rng.uniform(0, 2 * math.pi, 5),
                rng.uniform(0.75, 1.35),
                rng.uniform(0, math.pi),
            )
            if not (ndimage.binary_dilation(blob, iterations=3) & taken).any():
                break
        else:
            continue
        masks.append(blob)
        taken |= blob
        factor = rng.uniform(0.06, 0.2) if rng.random() < 0.8 else rng.uniform(2.0, 3.0)  # power ratio
        factor = 1 + difficulty.contrast * (factor - 1)
        echo = np.where(blob, echo * factor, echo)
        ring = ndimage.binary_dilation(blob, iterations=2) & ~blob
        if rng.random() < 0.4:  # halo
            echo = np.where(ring, echo * (1 - 0.5 * difficulty.contrast), echo)
        if factor < 1 and rng.random() < 0.5:  # posterior enhancement below a cystic nodule
            cols = blob.any(axis=0)
            bottom = np.flatnonzero(blob.any(axis=1))[-1]
            strip = (yy > bottom) & cols[None, :]
            echo = np.where(strip, echo * (1 + 0.25 * difficulty.contrast), echo)
    # fully developed speckle: complex Gaussian scatterers * sqrt(echogenicity), smoothed by an anisotropic PSF
    scatter = (rng.standard_normal((height, width)) + 1j * rng.standard_normal((height, width))) * np.sqrt(
        echo
    )
    psf = (0.8, 1.8)  # (axial, lateral) sigma in pixels
    envelope = np.hypot(
        ndimage.gaussian_filter(scatter.real, psf), ndimage.gaussian_filter(scatter.imag, psf)
    )
    envelope *= np.exp(-0.6 * yy / height)  # depth attenuation left after TGC
    db = 20 * np.log10(envelope / (3.0 * envelope.mean()) + 1e-6)  # log compression, 40 dB shown
    image = np.clip((db + 40) / 40, 0, 1)
    if difficulty.blur > 0:
        image = ndimage.gaussian_filter(image, difficulty.blur)
    image[: int(height * 0.02)] = 0
    return (image * 255).astype(np.uint8), masks


def render_xray(
    seed: tuple[int, ...], width: int, height: int, difficulty: Difficulty
) -> tuple[np.ndarray, np.ndarray]:
    """A lateral-foot radiograph-like image (uint8 HxW) and the calcaneus mask (bool)."""
    rng = np.random.default_rng(seed)
    s = min(width / 600, height / 450)
    jitter = lambda v: v * rng.uniform(0.95, 1.05)  # noqa: E731
    foot = Image.new("L", (width, height), 0)
    outline = [
        (0.08, 0.55),
        (0.2, 0.0),
        (0.42, 0.0),
        (0.5, 0.45),
        (0.75, 0.55),
        (0.97, 0.68),
        (0.98, 0.8),
        (0.6, 0.86),
        (0.1, 0.88),
        (0.05, 0.75),
    ]
    ImageDraw.Draw(foot).polygon([(jitter(x) * width, jitter(y) * height) for x, y in outline], fill=255)
    tissue = ndimage.gaussian_filter(np.asarray(foot, np.float32) / 255, 6 * s)
    attenuation = 0.6 * tissue * (0.9 + 0.2 * _lowfreq(rng, height, width, 10))

    texture = 0.55 + 0.3 * _lowfreq(rng, height, width, 70)

    def bone(mask: np.ndarray, mu: float) -> np.ndarray:
        """Bright cortical rim (fast fall-off from the edge) over a noisy trabecular interior."""
        depth = ndimage.distance_transform_edt(mask)
        return mu * (np.exp(-depth / (2.5 * s)) + texture) * mask

    scale = difficulty.target_scale
    cal_r = _fit_radius(0.11 * width * scale * rng.uniform(0.9, 1.1), height, width)
    cal_cx, cal_cy = width * rng.uniform(0.2, 0.28), height * rng.uniform(0.66, 0.72)
    cal_shape = np.array([0.0, 0.06, 0.02, 0.01, 0.0])
    calcaneus = _blob(
        height,
        width,
        cal_cx,
        cal_cy,
        cal_r,
        cal_shape,
        rng.uniform(0, 6, 5),
        rng.uniform(1.8, 2.2),
        rng.uniform(-0.25, 0.05),
    )
    talus = _blob(
        height,
        width,
        width * 0.36,
        height * 0.5,
        0.07 * width,
        np.array([0.0, 0.05, 0.0, 0.0, 0.0]),
        rng.uniform(0, 6, 5),
        1.6,
        0.2,
    )
    others = Image.fromarray(talus.astype(np.uint8) * 255, "L")
    draw = ImageDraw.Draw(others)
    draw.line([(width * 0.33, height * 0.42), (width * 0.3, 0)], fill=255, width=int(0.09 * width))  # tibia
    for k in range(5):  # metatarsals
        y0 = height * (0.52 + 0.04 * k)
        draw.line(
            [(width * 0.5, y0), (width * 0.9, y0 + height * 0.1)], fill=255, width=max(2, int(0.022 * width))
        )
    other_bones = (np.asarray(others) > 0) & ~ndimage.binary_dilation(calcaneus, iterations=3)
    attenuation += bone(other_bones, 1.0) + bone(calcaneus, difficulty.contrast)
    image = 1 - np.exp(-1.4 * attenuation)
    if difficulty.blur > 0:
        image = ndimage.gaussian_filter(image, difficulty.blur)
    image = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1) ** rng.uniform(0.8, 1.2)
    return (image * 255).astype(np.uint8), calcaneus
