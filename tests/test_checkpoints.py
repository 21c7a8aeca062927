"""Resume picks the newest checkpoint that can really be loaded; rotation never leaves only a broken one."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medloc_core.training.checkpoints import checkpoint_problem, latest_loadable_checkpoint, rotate


def make_checkpoint(folder: Path, step: int) -> Path:
    """The files a GRPO checkpoint holds, small but in their real formats."""
    folder.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32).reshape(8, 8)}, str(folder / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(64)}}}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    # as transformers saves it: python, numpy and torch RNG states (numpy's needs transformers' allowlist)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    torch.save(rng, folder / "rng_state.pth")
    torch.save(Tampered(), folder / "training_args.bin")  # a full pickle, never loaded on resume
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (folder / "curriculum_state.json").write_text(json.dumps({"global_step": step, "schedule": {"tau": 0.3}}))
    return folder


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


class Tampered:
    """Not a tensor, a container or an allowlisted numpy type: ``torch.load(weights_only=True)`` refuses it."""


DAMAGES = {
    "an unsafe pickle in the RNG state": lambda f: torch.save({"cpu": Tampered()}, f / "rng_state.pth"),
    "an unsafe pickle in the optimizer": lambda f: torch.save({"state": Tampered()}, f / "optimizer.pt"),
    "truncated weights": lambda f: truncate(f / "model.safetensors"),
    "truncated optimizer": lambda f: truncate(f / "optimizer.pt"),
    "truncated scheduler": lambda f: truncate(f / "scheduler.pt"),
    "truncated RNG state": lambda f: truncate(f / "rng_state.pth"),
    "truncated curriculum state": lambda f: truncate(f / "curriculum_state.json"),
    "missing curriculum state": lambda f: (f / "curriculum_state.json").unlink(),
    "missing trainer state": lambda f: (f / "trainer_state.json").unlink(),
    "no weights": lambda f: (f / "model.safetensors").unlink(),
    "empty weights file": lambda f: (f / "model.safetensors").write_bytes(b""),
}


def test_a_whole_checkpoint_is_loadable(tmp_path) -> None:
    assert checkpoint_problem(make_checkpoint(tmp_path / "checkpoint-1", 1)) is None


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, caplog) -> None:
    make_checkpoint(tmp_path / "checkpoint-2", 2)
    make_checkpoint(tmp_path / "checkpoint-10", 10)  # 10 beats 2 numerically, not by string order
    assert latest_loadable_checkpoint(tmp_path, set_aside=False) == str(tmp_path / "checkpoint-10")
    DAMAGES[damage](tmp_path / "checkpoint-10")
    assert checkpoint_problem(tmp_path / "checkpoint-10") is not None
    with caplog.at_level(logging.WARNING, logger="medloc_core.training.checkpoints"):
        assert latest_loadable_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert "checkpoint-10 cannot be resumed from" in caplog.text
    assert (tmp_path / "damaged-checkpoint-10").is_dir() and not (tmp_path / "checkpoint-10").exists()


def test_nothing_loadable_means_a_fresh_start(tmp_path) -> None:
    assert latest_loadable_checkpoint(tmp_path / "missing") is None
    make_checkpoint(tmp_path / "checkpoint-3", 3)
    truncate(tmp_path / "checkpoint-3" / "model.safetensors")
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_loadable_checkpoint(tmp_path) is None


def test_rotation_waits_until_the_newest_checkpoint_is_complete(tmp_path) -> None:
    for step in (2, 4):
        make_checkpoint(tmp_path / f"checkpoint-{step}", step)
    newest = make_checkpoint(tmp_path / "checkpoint-6", 6)
    (newest / "curriculum_state.json").unlink()  # a crash between the Trainer's save and ours
    assert rotate(tmp_path, keep=1) == []  # nothing deleted: the newest cannot be resumed from
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
    ]
    (newest / "curriculum_state.json").write_text(json.dumps({"global_step": 6, "schedule": {}}))
    assert [p.name for p in rotate(tmp_path, keep=2)] == ["checkpoint-2"]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
