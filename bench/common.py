"""Shared helpers of the benchmark scripts: polite CPU threading, the synthetic benchmark set, small stats.

Import this module before torch: :func:`limit_threads` sets ``OMP_NUM_THREADS`` so that torch, when it is first
imported, starts with that many intra-op threads. On a 2-core machine shared with other processes, 2 torch
threads were ~40x slower per SFT step than 1 (OpenMP threads spin while waiting for a core), so the benchmarks
default to 1 thread.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# MEDLOC_BENCH_RESULTS redirects the outputs (the smoke test does, so it never overwrites the measured results).
RESULTS_DIR = Path(os.environ.get("MEDLOC_BENCH_RESULTS", REPO_ROOT / "bench" / "results"))

# The tiny model's input frame (about 112x84 pixels for the 224x168 synthetic images), as in
# configs/medloc_training_local.yaml.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112

if str(REPO_ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first on sys.path, not the repo root
    sys.path.insert(0, str(REPO_ROOT))


def limit_threads(n: int) -> None:
    """Use ``n`` intra-op threads in torch/BLAS (env vars for libraries not imported yet, torch if it is)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def synthetic_prepared(
    root: str | os.PathLike,
    *,
    n: int,
    seed: int = 0,
    size: int = 224,
    target_scale: float = 1.0,
    contrast: float = 0.35,
    blur: float = 1.0,
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    answer_style: str = "answer",
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> Any:
    """Generate (once, cached by its truth file) a synthetic HAM10000-layout set (``size`` px wide, 4:3), read it
    with the real reader and preprocess it for the frame ``min_pixels..max_pixels`` (default: the tiny model's).
    Returns the prepared DataFrame (boxes: original pixels in
    ``x1..y2``, model-input pixels in ``in_x1..in_y2``, xyxy)."""
    from medloc_core.data.ingest import read_dataset
    from medloc_core.data.preprocess import preprocess
    from medloc_core.data.synth import TRUTH_FILE, generate
    from medloc_core.data.synth_render import Difficulty

    root = Path(root)
    difficulty = Difficulty(target_scale=target_scale, contrast=contrast, blur=blur)
    truth = root / TRUTH_FILE
    wanted = {
        "n": n,
        "seed": seed,
        "difficulty": {"target_scale": target_scale, "contrast": contrast, "blur": blur},
    }
    cached = False
    if truth.is_file():
        have = json.loads(truth.read_text())
        cached = all(have.get(k) == v for k, v in wanted.items()) and have.get("width") == size
    if not cached:
        generate(
            "ham10000", root, n=n, seed=seed, size=size, difficulty=difficulty, workers=1, progress=False
        )
    records = read_dataset("ham10000", root, workers=1, progress=False).records
    prepared, _ = preprocess(
        records,
        seed=seed,
        split_fractions=tuple(split_fractions),
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        answer_style=answer_style,
    )
    return prepared


def recipe_training_config(**overrides: Any) -> Any:
    """The embedded recipe's ``TrainingConfig`` (the ``training:`` block of configs/medloc_training_local.yaml,
    parsed once by the pipeline's own ``TrainingConfig``) with the preprocessing's frame and answer style, and
    ``overrides`` on top (e.g. ``model_name_or_path``, ``seed``, ``max_steps``)."""
    import yaml

    from medloc_core.training.config import TrainingConfig

    config = yaml.safe_load((REPO_ROOT / "configs" / "medloc_training_local.yaml").read_text())
    pre = config["parameters"]["preprocessing"]
    frame = {k: pre[k] for k in ("min_pixels", "max_pixels", "answer_style")}
    return TrainingConfig(**{**config["parameters"]["training"], **frame, **overrides})


def stand_in(work: Path, seed: int) -> tuple[Path, Any]:
    """The ``grounder`` stand-in (init seed ``seed``, built once under ``work/models``) and its processor, set to
    the bench's input frame (``MIN_PIXELS``..``MAX_PIXELS``)."""
    from medloc_core.model import loading
    from medloc_core.model.standin import ensure_tiny_model

    base = ensure_tiny_model(
        work / "models", seed=seed, size="grounder", min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
    )
    processor = loading.load_processor(str(base))
    loading.set_pixel_bounds(processor, MIN_PIXELS, MAX_PIXELS)
    return base, processor


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value). NaNs are an error."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    if any(math.isnan(v) for v in vals):
        raise ValueError(f"mean_std: NaN in {vals}")
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def fmt_pm(values: Iterable[float], digits: int = 2, scale: float = 1.0) -> str:
    """``"mean ± std"`` of ``values`` times ``scale``."""
    m, s = mean_std(v * scale for v in values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def machine_note() -> str:
    """CPU count, 1-minute load average and Python/platform: the context every table is printed with."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} CPUs, load average {load:.2f} at {time.strftime('%Y-%m-%d %H:%M:%S')}, "
        f"Python {platform.python_version()}, {platform.machine()}"
    )
