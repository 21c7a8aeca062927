"""Which ``checkpoint-N`` folder a run can resume from, and rotation that never leaves only a broken one.

A checkpoint is *loadable* when every file resume reads is whole: ``trainer_state.json`` and
``curriculum_state.json`` parse (the latter is written last, after weights, optimizer and RNG state), every
``*.safetensors`` file is as long as its header says, and every ``torch.save`` file (optimizer, scheduler, RNG
state) is a complete zip archive that ``torch.load(weights_only=True)`` accepts. These checks read headers, zip
directories and pickles, memory-mapping the tensors without reading them, so they cost milliseconds even for a 3B
model's 30 GB optimizer state.

Resume takes the newest loadable checkpoint; newer damaged ones are renamed ``damaged-checkpoint-N`` (kept for
inspection, out of the Trainer's way) with a warning naming what is wrong.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CURRICULUM_STATE_NAME = "curriculum_state.json"
TRAINER_STATE_NAME = "trainer_state.json"
PREFIX = "checkpoint-"
DAMAGED_PREFIX = "damaged-"
#: Pickles the Trainer writes but never loads on resume (the run's own arguments are used instead).
NOT_LOADED_ON_RESUME = ("training_args.bin",)


def checkpoint_steps(output_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-N`` folder, newest first."""
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        suffix = path.name[len(PREFIX) :]
        if path.is_dir() and path.name.startswith(PREFIX) and suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found, reverse=True)


def _safetensors_problem(path: Path) -> str | None:
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated (no header)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path.name} is truncated (header of {n} bytes in a {size}-byte file)"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:
        return f"{path.name} is unreadable: {exc}"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{path.name} is truncated ({size} bytes, header says {8 + n + end})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            if not archive.namelist():
                return f"{path.name} is empty"
    except (OSError, zipfile.BadZipFile) as exc:
        return f"{path.name} is truncated or not a torch.save archive: {exc}"
    if path.name in NOT_LOADED_ON_RESUME:
        return None
    return _unsafe_pickle_problem(path)


def _unsafe_pickle_problem(path: Path) -> str | None:
    """Load ``path`` exactly as resume will (``weights_only=True`` with the numpy globals transformers allows),
    memory-mapped so no tensor is read: a pickle that safe loading refuses is damage like any other."""
    import torch
    from transformers.trainer_pt_utils import safe_globals

    try:
        with safe_globals():
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any refusal makes the checkpoint unusable; say which and why
        first = " ".join(str(exc).split())[:200]
        return f"{path.name} cannot be loaded safely (weights_only): {type(exc).__name__}: {first}"
    return None


def _json_problem(path: Path, required: str | None = None) -> str | None:
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{path.name} is damaged: {exc}"
    if required is not None and (not isinstance(data, dict) or required not in data):
        return f"{path.name} has no {required!r}"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (one line), or None when it is loadable."""
    problem = _json_problem(folder / CURRICULUM_STATE_NAME, "schedule") or _json_problem(
        folder / TRAINER_STATE_NAME, "global_step"
    )
    if problem:
        return problem
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not (folder / "pytorch_model.bin").is_file():
        return "no weights (*.safetensors)"
    for path in weights:
        problem = _safetensors_problem(path)
        if problem:
            return problem
    for path in sorted([*folder.glob("*.pt"), *folder.glob("*.pth"), *folder.glob("*.bin")]):
        problem = _torch_file_problem(path)
        if problem:
            return problem
    return None


def latest_loadable_checkpoint(output_dir: Path, *, set_aside: bool = True) -> str | None:
    """The newest loadable ``checkpoint-N`` under ``output_dir``, or None. Damaged newer ones are logged and,
    with ``set_aside``, renamed ``damaged-checkpoint-N`` so the Trainer neither resumes from nor rotates them."""
    for _, folder in checkpoint_steps(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        logger.warning("checkpoint %s cannot be resumed from (%s); trying the previous one", folder, problem)
        if set_aside:
            target = folder.with_name(DAMAGED_PREFIX + folder.name)
            if target.exists():
                shutil.rmtree(target)
            folder.rename(target)
    return None


def restore_curriculum(checkpoint: str | Path, schedule: Any) -> int:
    """Load a checkpoint's ``curriculum_state.json`` into ``schedule`` (τ, the window, the raise count) and
    return the optimizer step it was saved at; a checkpoint without it cannot be resumed exactly."""
    state_file = Path(checkpoint) / CURRICULUM_STATE_NAME
    if not state_file.is_file():
        raise ValueError(f"{checkpoint}: no {CURRICULUM_STATE_NAME}; cannot resume the curriculum exactly")
    payload = json.loads(state_file.read_text(encoding="utf-8"))
    schedule.load_state_dict(payload["schedule"])
    return int(payload["global_step"])


def rotate(output_dir: Path, keep: int | None) -> list[Path]:
    """Delete the oldest checkpoints beyond the ``keep`` newest, but only once the newest is loadable, so a
    crash while saving can never leave just an incomplete checkpoint. Returns the deleted folders."""
    if keep is None or keep <= 0:
        return []
    found = checkpoint_steps(output_dir)
    if not found or checkpoint_problem(found[0][1]) is not None:
        return []
    deleted = []
    for _, folder in found[keep:]:
        shutil.rmtree(folder, ignore_errors=True)
        deleted.append(folder)
    return deleted
