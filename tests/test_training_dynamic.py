"""Dynamic sampling on the real trainer: no zero-spread group reaches the loss, batches keep their shape, the
curriculum sees the dataloader's draw, a crash resumes (the two-rank run is in test_training_run.py)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from helpers import CrashAt, cpu_training_config  # noqa: E402


class _LossSpy:
    """Records what every ``compute_loss`` call of the GRPO trainer receives (rows, per-group advantage spread and
    loss tokens), installed on the trainer class for one test."""

    def __init__(self, monkeypatch, group: int) -> None:
        from medloc_core.training.trainer import _trainer_class

        cls, spy = _trainer_class(), self
        self.batches: list[dict] = []
        original = cls.compute_loss

        def compute_loss(trainer, model, inputs, *args, **kwargs):
            mask = inputs["completion_mask"]
            spy.batches.append(
                {
                    "rows": mask.shape[0],
                    "spread": inputs["advantages"].view(-1, group).abs().amax(dim=1).tolist(),
                    "tokens": mask.view(-1, group, mask.shape[1]).sum(dim=(1, 2)).tolist(),
                    "normalizer": float(inputs["num_items_in_batch"]),
                }
            )
            return original(trainer, model, inputs, *args, **kwargs)

        monkeypatch.setattr(cls, "compute_loss", compute_loss)


@pytest.mark.slow
def test_dynamic_sampling_keeps_zero_spread_groups_out_of_the_loss_and_resumes(
    sft_run, data, tmp_path, monkeypatch
) -> None:
    """A strict fixed τ with no format reward leaves most groups without reward spread: extra draws refill the
    batch, the rest is masked; every batch keeps its shape; a crash resumes and the run finishes."""
    from medloc_core.rewards.tracker import RewardTracker
    from medloc_core.training.dynamic_sampling import ZERO_ADVANTAGE
    from medloc_core.training.session import prepare_training, train

    recorded: list[int] = []
    record = RewardTracker.record

    def counting_record(self, name, ious, *args, **kwargs):
        if not self._paused:
            recorded.append(len(ious))
        return record(self, name, ious, *args, **kwargs)

    monkeypatch.setattr(RewardTracker, "record", counting_record)
    spy = _LossSpy(monkeypatch, group=4)
    out = tmp_path / "run"
    cfg = cpu_training_config(
        model_name_or_path=str(sft_run["sft"]),
        schedule="fixed",
        fixed_tau=0.6,
        format_reward=False,
        dynamic_sampling=True,
        dynamic_sampling_draws=3,
        max_steps=5,
        save_steps=2,
    )
    with pytest.raises(KeyboardInterrupt):
        train(data, cfg, out, callbacks=[CrashAt(3).callback])
    session = prepare_training(data, cfg, out, metrics_sink=lambda m, s: None)
    assert session.resume_checkpoint == str(out / "checkpoint-2")
    result = session.run()
    assert [r["step"] for r in result.history] == [1, 2, 3, 4, 5] and result.steps == 5

    assert len(spy.batches) == 3 + 3  # steps 1-3 before the crash, 3-5 after the resume
    for batch in spy.batches:
        assert batch["rows"] == cfg.per_device_train_batch_size
        for spread, tokens in zip(batch["spread"], batch["tokens"]):
            assert spread > ZERO_ADVANTAGE or tokens == 0  # a zero-spread group never reaches the loss
        assert batch["normalizer"] == sum(batch["tokens"])
    # the curriculum sees the dataloader's draw only: one batch of IoUs per step, whatever was drawn on top
    assert recorded == [cfg.per_device_train_batch_size] * 6
    rows = result.history
    assert all(r["train/dynamic_sampling/draws"] in (1.0, 2.0, 3.0) for r in rows)
    assert any(r["train/dynamic_sampling/draws"] > 1 for r in rows)
    for r in rows:
        assert r["train/dynamic_sampling/live_groups"] + r["train/dynamic_sampling/masked_groups"] == 1.0
        dead = r["train/dead_all_hit"] + r["train/dead_all_miss"]
        # nothing to refill: every group of the first draw was live
        assert r["train/dynamic_sampling/draws"] > 1 or dead == 0.0
