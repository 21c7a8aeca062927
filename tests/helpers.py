"""Helpers shared by several test modules (data builders, images, the answering stand-in, pipeline runs).

Test modules import them from here (``from helpers import make_prepared``); fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image, ImageDraw, ImageFilter

from medloc_core import prompts
from medloc_core.boxes import Frame
from medloc_core.data.ingest import read_dataset
from medloc_core.training.config import TrainingConfig

ANSWER_BOX = (14.0, 28.0, 42.0, 56.0)  # model-input pixels


ANSWER_STYLE = "answer"


QUERY = "Find the lesion."


# Image sizes (h, w) the SFT sees; the tiny model generalises poorly to other sequence lengths.
IMAGE_SIZES = ((100, 150), (300, 200), (60, 60))


def random_image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def build_answering_model(cache_dir) -> str:
    """Tiny model trained (SFT, ~10 s on CPU) to always answer ``ANSWER_BOX``; cached on disk."""
    from medloc_core.model.loading import load_model, load_processor
    from medloc_core.model.standin import ensure_tiny_model
    from medloc_core.prompts import build_prompt_text, chat_messages, target_completion
    from medloc_core.training.sft import SFTExample, sft_warmup

    out = cache_dir / "answering-model"
    if (out / "config.json").is_file():
        return str(out)
    base = ensure_tiny_model(cache_dir / "tiny")
    model, processor = load_model(base, dtype="float32"), load_processor(base)
    target = target_completion(ANSWER_BOX, "lesion", answer_style=ANSWER_STYLE)
    messages = chat_messages(build_prompt_text(QUERY, answer_style=ANSWER_STYLE))
    examples = [
        SFTExample(messages, random_image(h, w, seed=i), target) for i, (h, w) in enumerate(IMAGE_SIZES)
    ]
    sft_warmup(model, processor, examples, steps=50, batch_size=2, learning_rate=1e-2, progress=False)
    tmp = out.with_name("answering-model.tmp")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.rename(out)
    return str(out)


def prepared_frame(tmp_path, *, answer_box_gt: bool = True) -> pd.DataFrame:
    """Prepared records for 3 test images + 1 train image; GT = the model's answer for two of the test rows."""
    rows = []
    for i, (h, w) in enumerate(IMAGE_SIZES):
        path = tmp_path / f"img{i}.png"
        random_image(h, w, seed=30 + i).save(path)
        frame = Frame.for_qwen(w, h, min_pixels=56 * 56, max_pixels=112 * 112)
        gt = frame.to_original(ANSWER_BOX) if i < 2 else (0.0, 0.0, w / 10, h / 10)
        rows.append(
            {
                "record_id": f"r{i}",
                "dataset": "synth_a" if i < 2 else "synth_b",
                "image_path": str(path),
                "query": QUERY,
                "prompt_text": answer_prompt(),
                "x1": gt[0],
                "y1": gt[1],
                "x2": gt[2],
                "y2": gt[3],
                "image_width": w,
                "image_height": h,
                "split": "test",
            }
        )
    rows.append({**rows[0], "record_id": "train0", "split": "train"})
    return pd.DataFrame(rows)


REPO = Path(__file__).resolve().parents[1]


def make_prepared(
    folder: Path, n: int = 16, size: int = 112, datasets=("synth",), seed: int = 0
) -> pd.DataFrame:
    """A prepared table like the data pipeline's: one bright blurred ellipse per noisy 112x112 image."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        arr = np.clip(rng.normal(70, 12, (size, size)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr).convert("RGB")
        w, h = (int(v) for v in rng.integers(14, 40, 2))
        x1, y1 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        v = int(rng.integers(180, 240))
        ImageDraw.Draw(img).ellipse([x1, y1, x1 + w, y1 + h], fill=(v, v, v))
        path = folder / f"img{i}.png"
        img.filter(ImageFilter.GaussianBlur(1)).save(path)
        query = "Locate the bright blob in the image."
        rows.append(
            dict(
                record_id=f"r{i}",
                dataset=datasets[i % len(datasets)],
                image_path=str(path),
                query=query,
                x1=x1,
                y1=y1,
                x2=x1 + w,
                y2=y1 + h,
                image_width=size,
                image_height=size,
                group_id=f"g{i}",
                split="train" if i < n - 2 else "test",
                meta="{}",
                prompt_text=prompts.build_prompt_text(query),
                input_width=size,
                input_height=size,
                in_x1=float(x1),
                in_y1=float(y1),
                in_x2=float(x1 + w),
                in_y2=float(y1 + h),
                label="bright blob",
            )
        )
    return pd.DataFrame(rows)


def mask(
    path: Path, rect: tuple[int, int, int, int], w: int = 40, h: int = 30, fmt: str | None = None
) -> Path:
    """A 0/255 mask with foreground rows y1..y2-1, cols x1..x2-1 (rect = x1, y1, x2, y2 exclusive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = rect
    m[y1:y2, x1:x2] = 255
    Image.fromarray(m, "L").save(path, format=fmt)
    return path


MAX_STEPS = 4


def shrunken_config(tmp_path: Path) -> Path:
    config = yaml.safe_load((REPO / "configs" / "medloc_training_local.yaml").read_text())
    params = config["parameters"]
    source = params["data"]["sources"][0]
    source["root"] = str(tmp_path / "data" / "synth-ham10000")
    source["synth"]["n"] = 30
    # 120 SFT steps: enough for the stand-in to answer in the box format (a model that fails to parse on >= 90 %
    # of the test images is never registered).
    params["training"].update(
        max_steps=MAX_STEPS, sft_warmup_steps=120, save_steps=2, log_completions_every=2
    )
    training = params["training"]
    block = "spread" if training["schedule"] == "medloc_spread" else "curriculum"  # the schedule's own block
    training[block]["window"] = 2
    params["evaluation"]["n_boot"] = 100
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def env_for(tmp_path: Path, *, mlflow_uri: str | None = "") -> dict[str, str]:
    """A subprocess environment with ZenML, MLflow and MedLoc state under ``tmp_path``.

    ``mlflow_uri=""`` points MLflow at a SQLite file in ``tmp_path``; None leaves ``MLFLOW_TRACKING_URI`` unset.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_", "MEDLOC_", "AWS_"))}
    env.update(
        ZENML_ANALYTICS_OPT_IN="false",
        ZENML_CONFIG_PATH=str(tmp_path / "zenml" / "config"),
        ZENML_LOCAL_STORES_PATH=str(tmp_path / "zenml" / "stores"),
        ZENML_LOGGING_COLORS_DISABLED="true",
        ZENML_DISABLE_INTERACTIVE_INPUT="true",
        MEDLOC_HOME=str(tmp_path / "home"),
        HF_HUB_OFFLINE="1",
    )
    if mlflow_uri is not None:
        env["MLFLOW_TRACKING_URI"] = mlflow_uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
    return env


def zenml_query(env: dict[str, str], code: str) -> object:
    """Run ``code`` (which sets ``out``) against the ZenML store of ``env`` in a fresh interpreter and return
    ``out``: the in-process ZenML client is a singleton bound to whichever store it saw first."""
    script = f"import json\nfrom zenml.client import Client\n{code}\nprint(json.dumps(out))\n"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def answer_prompt() -> str:
    """The prompt the answering stand-in was trained on (``QUERY`` in ``ANSWER_STYLE``)."""
    return prompts.build_prompt_text(QUERY, answer_style=ANSWER_STYLE)


#: The promotion gate's metric and the key of its paired gain over the base model.
M = "eval/A@0.5"
G = "eval/gain/A@0.5"


def m(value: float | None, **extra: float) -> dict:
    """Metrics with ``M`` at ``value`` (none when None) and ``extra`` keys."""
    out = {} if value is None else {M: value}
    return {**out, **extra}


def g(value: float, gain: float = 10.0, low: float = 2.0, high: float = 18.0, **extra: float) -> dict:
    """A candidate's metrics with the paired gain over the base model and its 95 % interval."""
    return m(value, **{f"{G}": gain, f"{G}_ci_low": low, f"{G}_ci_high": high}, **extra)


def solid_image(path: Path, w: int = 40, h: int = 30, value: int = 120) -> Path:
    """A one-colour RGB image file (``w`` x ``h`` pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def read_quiet(fmt: str, root: Path, **kw):
    """Read a dataset folder in this process, no progress bar, no quarantine limit."""
    return read_dataset(fmt, root, workers=1, progress=False, max_quarantine_fraction=None, **kw)


def assert_accounted(result, expected_rows: int) -> None:
    """Every input row is in records or in quarantine, and the quarantine's ``rows`` add up."""
    c = result.manifest["counts"]
    assert c["input_rows"] == expected_rows, c
    assert c["source_rows_in_records"] + c["quarantined"] == expected_rows, c
    assert int(result.quarantine["rows"].sum()) == c["quarantined"]


def coco_file(path: Path, images: list, annotations, categories=None) -> Path:
    """A COCO annotation file with these images and annotations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "images": images,
        "annotations": annotations,
        "categories": categories or [{"id": 1, "name": "x"}],
    }
    path.write_text(json.dumps(data))
    return path


def cpu_training_config(**kw: object) -> TrainingConfig:
    """A small CPU ``TrainingConfig`` (no KL, no checkpoints, short completions) with ``kw`` on top."""
    base = {"use_cpu": True, "progress": False, "beta": 0.0, "save_steps": 0, "learning_rate": 3e-4}
    return TrainingConfig.model_validate({**base, "max_completion_length": 48, **kw})


def recipe_training_block(name: str) -> dict:
    """The ``parameters.training`` block of ``configs/<name>``."""
    return yaml.safe_load((REPO / "configs" / name).read_text())["parameters"]["training"]


class Hooks:
    """Counts vision-tower forwards and snapshots weights when training (re)starts."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        outer = self
        self.vision_calls = 0
        self.snapshot: dict | None = None
        self.start_step: int | None = None

        class CB(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kw):
                outer.start_step = state.global_step
                outer.snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
                visual = [m for n, m in model.named_modules() if n.endswith("visual")]
                assert visual, "no vision tower found"
                visual[0].register_forward_hook(outer._count)

        self.callback = CB()

    def _count(self, module, inputs, output) -> None:
        self.vision_calls += 1


class CrashAt:
    def __init__(self, step: int) -> None:
        from transformers import TrainerCallback

        target = step

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == target:
                    raise KeyboardInterrupt(f"simulated crash at step {target}")

        self.callback = CB()
