"""Synthetic stand-ins for the benchmark datasets, written in the real datasets' layouts.

* ``ham10000``: dermoscopy-like lesions (600x450 RGB JPEG), 0/255 PNG masks in
  ``HAM10000_segmentations_lesion_tschandl/``, ``HAM10000_metadata.csv`` with the seven real columns; several
  images per ``lesion_id`` (same lesion re-photographed: shifted, rotated, rescaled).
* ``tn3k``: ultrasound-like thyroid nodules with fully developed speckle (480x360 grayscale JPEG), **JPEG**
  masks, ``tn3k-trainval-fold0.json``; about 15 % of images have two nodules.
* ``xray``: lateral-foot X-ray-like images (600x450 grayscale PNG) with the calcaneus as target, as COCO JSON
  (``info.dataset = "heel"``).

Every image is generated from ``numpy.random.default_rng([seed, kind, index])``, so a dataset is identical
for a seed whatever the number of worker processes. Ground truth is written to ``medloc_synth.json``:
``boxes[record_id] = [x1, y1, x2, y2]`` (original pixels, continuous, exclusive end; the ids the readers
produce) and, for masks, ``components[record_id]`` (one box per connected component).

The pixels come from ``data.synth_render``. Difficulty knobs (:class:`Difficulty`): ``target_scale`` multiplies the target size, ``contrast`` (0-1]
blends the target towards its background, ``blur`` is a Gaussian sigma in pixels on the whole image. Small,
low-contrast, blurred targets make a fixed IoU>=0.5 reward sparse.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from medloc_core.data.synth_render import (
    EIGHT_CONNECTED,
    Difficulty,
    mask_extent,
    render_dermoscopy,
    render_ultrasound,
    render_xray,
)

KINDS = ("ham10000", "tn3k", "xray")
DEFAULT_SIZES = {"ham10000": (600, 450), "tn3k": (480, 360), "xray": (600, 450)}
TRUTH_FILE = "medloc_synth.json"
_KIND_CODE = {"ham10000": 1, "tn3k": 2, "xray": 3}


def image_size(kind: str, size: int | None) -> tuple[int, int]:
    """``(width, height)`` for a kind; ``size`` sets the width and keeps the real aspect ratio."""
    width, height = DEFAULT_SIZES[kind]
    if size is None:
        return width, height
    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    return int(size), max(32, int(round(size * height / width)))


# ---------------------------------------------------------------- dermoscopy (HAM10000 layout)

_DX = ("nv", "mel", "bkl", "bcc", "akiec", "vasc", "df")
_DX_P = (0.67, 0.11, 0.11, 0.05, 0.033, 0.014, 0.013)
_SITES = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "scalp")


def _ham_job(job: dict[str, Any]) -> tuple[str, list[float], list[list[float]]]:
    image, mask = render_dermoscopy(
        job["lesion_seed"], job["view_seed"], job["width"], job["height"], job["difficulty"]
    )
    Image.fromarray(image).save(job["image_path"], quality=90)
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(job["mask_path"])
    box = mask_extent(mask)
    return job["record_id"], box, [box]


def _ham_jobs(
    out: Path, n: int, seed: int, width: int, height: int, difficulty: Difficulty
) -> tuple[list[dict], list[list[str]]]:
    rng = np.random.default_rng([seed, _KIND_CODE["ham10000"], 10**9])
    mask_dir = out / "HAM10000_segmentations_lesion_tschandl"
    mask_dir.mkdir(parents=True, exist_ok=True)
    jobs, rows = [], []
    lesion, left = -1, 0
    lesion_meta: dict[int, list[str]] = {}
    for i in range(n):
        if left == 0:
            lesion += 1
            left = int(rng.choice([1, 1, 2, 3]))  # about 1.75 images per lesion, as in HAM10000 (~1.34)
            lesion_meta[lesion] = [
                str(rng.choice(_DX, p=_DX_P)),
                str(rng.choice(["histo", "follow_up", "consensus", "confocal"], p=[0.53, 0.37, 0.09, 0.01])),
                f"{int(rng.integers(3, 18)) * 5}.0",
                str(rng.choice(["male", "female"])),
                str(rng.choice(_SITES)),
            ]
        left -= 1
        image_id = f"ISIC_{24306 + i:07d}"
        part = "HAM10000_images_part_1" if i < (n + 1) // 2 else "HAM10000_images_part_2"
        (out / part).mkdir(parents=True, exist_ok=True)
        lesion_id = f"HAM_{lesion:07d}"
        rows.append([lesion_id, image_id, *lesion_meta[lesion]])
        jobs.append(
            {
                "record_id": image_id,
                "lesion_seed": (seed, _KIND_CODE["ham10000"], 1, lesion),
                "view_seed": (seed, _KIND_CODE["ham10000"], 2, i),
                "width": width,
                "height": height,
                "difficulty": difficulty,
                "image_path": str(out / part / f"{image_id}.jpg"),
                "mask_path": str(mask_dir / f"{image_id}_segmentation.png"),
            }
        )
    return jobs, rows


# ---------------------------------------------------------------- ultrasound (TN3K layout)


def _save_jpeg_mask(mask: np.ndarray, path: str) -> None:
    """Save a 0/255 mask as JPEG (lossy, like TN3K) at a quality where thresholding > 127 restores it."""
    for quality in (90, 100):
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(path, quality=quality)
        with Image.open(path) as back:
            if np.array_equal(np.asarray(back) > 127, mask):
                return
    raise RuntimeError(f"JPEG mask {path} does not survive thresholding")


def _tn3k_job(job: dict[str, Any]) -> tuple[str, list[float], list[list[float]]]:
    image, masks = render_ultrasound(job["seed"], job["width"], job["height"], job["difficulty"])
    union = np.logical_or.reduce(masks)
    Image.fromarray(image, "L").save(job["image_path"], quality=90)
    _save_jpeg_mask(union, job["mask_path"])
    labels, count = ndimage.label(union, structure=EIGHT_CONNECTED)
    components = [mask_extent(labels == k) for k in range(1, count + 1)]
    return job["record_id"], mask_extent(union), components


def _tn3k_jobs(
    out: Path, n: int, seed: int, width: int, height: int, difficulty: Difficulty
) -> tuple[list[dict], dict]:
    root = out / "tn3k"
    n_test = max(1, round(0.2 * n)) if n >= 2 else 0
    n_trainval = n - n_test
    jobs = []
    for subset, count in (("trainval", n_trainval), ("test", n_test)):
        for d in ("image", "mask"):
            (root / f"{subset}-{d}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            jobs.append(
                {
                    "record_id": f"{subset}_{i:04d}",
                    "seed": (seed, _KIND_CODE["tn3k"], 0 if subset == "trainval" else 1, i),
                    "width": width,
                    "height": height,
                    "difficulty": difficulty,
                    "image_path": str(root / f"{subset}-image" / f"{i:04d}.jpg"),
                    "mask_path": str(root / f"{subset}-mask" / f"{i:04d}.jpg"),
                }
            )
    order = np.random.default_rng([seed, _KIND_CODE["tn3k"], 10**9]).permutation(n_trainval).tolist()
    n_val = max(1, round(0.2 * n_trainval)) if n_trainval >= 2 else 0
    fold = {"train": sorted(order[n_val:]), "val": sorted(order[:n_val])}
    return jobs, fold


# ---------------------------------------------------------------- X-ray (COCO)


def _xray_job(job: dict[str, Any]) -> tuple[str, list[float], list[list[float]]]:
    image, mask = render_xray(job["seed"], job["width"], job["height"], job["difficulty"])
    Image.fromarray(image, "L").save(job["image_path"])
    box = mask_extent(mask)
    return job["record_id"], box, [box]


# ---------------------------------------------------------------- driver


def _run_jobs(fn: Callable, jobs: list[dict], workers: int | None, progress: bool) -> list:
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    with tqdm(total=len(jobs), desc="synthesising", unit="img", disable=not progress, leave=False) as bar:
        if workers <= 1 or len(jobs) < 32:
            results = []
            for job in jobs:
                results.append(fn(job))
                bar.update(1)
            return results
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = []
            for result in pool.map(fn, jobs, chunksize=max(1, len(jobs) // (workers * 8))):
                results.append(result)
                bar.update(1)
            return results


def generate(
    kind: str,
    out_dir: str | os.PathLike,
    *,
    n: int,
    seed: int = 0,
    size: int | None = None,
    difficulty: Difficulty | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``n`` synthetic images of ``kind`` in its real layout under ``out_dir``; return the truth dict
    (also saved as ``out_dir/medloc_synth.json``). ``size`` = image width in pixels (height keeps the
    kind's aspect ratio)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    difficulty = difficulty or Difficulty()
    width, height = image_size(kind, size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if kind == "ham10000":
        jobs, rows = _ham_jobs(out, n, seed, width, height, difficulty)
        results = _run_jobs(_ham_job, jobs, workers, progress)
        header = "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        (out / "HAM10000_metadata.csv").write_text(header + "".join(",".join(r) + "\n" for r in rows))
    elif kind == "tn3k":
        jobs, fold = _tn3k_jobs(out, n, seed, width, height, difficulty)
        results = _run_jobs(_tn3k_job, jobs, workers, progress)
        (out / "tn3k" / "tn3k-trainval-fold0.json").write_text(json.dumps(fold))
        extra["fold0"] = fold
    else:
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        jobs = [
            {
                "record_id": f"instances_default_{i + 1}",
                "seed": (seed, _KIND_CODE["xray"], i),
                "width": width,
                "height": height,
                "difficulty": difficulty,
                "image_path": str(out / "images" / f"heel_{i:05d}.png"),
            }
            for i in range(n)
        ]
        results = _run_jobs(_xray_job, jobs, workers, progress)
        coco = {
            "info": {"description": "MedLoc synthetic lateral foot X-rays", "dataset": "heel", "seed": seed},
            "categories": [{"id": 1, "name": "calcaneus", "supercategory": "bone"}],
            "images": [
                {
                    "id": i + 1,
                    "file_name": f"heel_{i:05d}.png",
                    "width": width,
                    "height": height,
                    "patient_id": f"P{i:05d}",
                }
                for i in range(n)
            ],
            "annotations": [
                {
                    "id": i + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "area": (box[2] - box[0]) * (box[3] - box[1]),
                    "iscrowd": 0,
                }
                for i, (_, box, _) in enumerate(results)
            ],
        }
        (out / "annotations" / "instances_default.json").write_text(json.dumps(coco))
    truth = {
        "kind": kind,
        "n": n,
        "seed": seed,
        "width": width,
        "height": height,
        "difficulty": asdict(difficulty),
        "boxes": {rid: box for rid, box, _ in results},
        "components": {rid: comps for rid, _, comps in results},
        **extra,
    }
    (out / TRUTH_FILE).write_text(json.dumps(truth, indent=1))
    return truth
