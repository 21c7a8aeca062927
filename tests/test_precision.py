"""Mixed precision keeps fp32 master weights: the GPU recipe's settings really move the weights.

With ``bf16: true`` the trainable tensors and AdamW's state stay fp32 and only the compute runs in bf16
(autocast). Loading the weights in bf16 instead made one AdamW step at lr 1e-6 change ~2.5 % of the elements
(bf16 keeps 8 bits of mantissa, so a 1e-6 update of a ~1e-2 weight rounds away); fp32 master weights change
every element that gets a gradient.
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from helpers import REPO, make_prepared

from medloc_core.training.config import TrainingConfig
from medloc_core.training.session import prepare_training

MIN_CHANGED = 0.90


def _gpu_precision_settings() -> dict:
    """The precision-relevant options of the GPU recipe, read from the config file itself."""
    section = yaml.safe_load((REPO / "configs" / "medloc_training_gpu.yaml").read_text())["parameters"]
    section = section["training"]
    assert section["bf16"] is True, "the GPU recipe is expected to train in bf16 mixed precision"
    return {k: section[k] for k in ("bf16", "learning_rate", "weight_decay", "max_grad_norm") if k in section}


def varying_reward(prompts, completions, **kwargs) -> list[float]:
    """A reward that varies within every group (seeded), so each GRPO group has a non-zero advantage."""
    rng = random.Random(len(completions))
    return [rng.random() for _ in completions]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("precision-data"), n=8)


@pytest.mark.parametrize("adapter", ["full", "lora", "mlae"])
def test_one_bf16_step_at_lr_1e6_changes_nearly_every_trainable_element(adapter, data, tmp_path) -> None:
    settings = _gpu_precision_settings()
    assert settings["learning_rate"] == pytest.approx(1e-6)
    cfg = TrainingConfig.model_validate(
        {
            **settings,
            "model_name_or_path": "tiny",
            "tiny_model_dir": str(tmp_path / "models"),
            "adapter": adapter,
            "use_cpu": True,
            "max_steps": 1,
            "num_generations": 4,
            "per_device_train_batch_size": 8,
            "max_completion_length": 8,
            "beta": 0.0,
            "save_steps": 0,
            "progress": False,
            "format_reward": False,
            # MLAE's expert dropout zeroes ~10 % of the experts' gradients in any one step by design; this test
            # is about bf16 rounding, so every expert takes part.
            "mlae_drop_rate": 0.0,
        }
    )
    session = prepare_training(data, cfg, tmp_path / "out", metrics_sink=lambda m, s: None)
    trainer = session.trainer
    trainer.reward_funcs[0] = varying_reward
    model = trainer.model
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert {p.dtype for p in trainable.values()} == {torch.float32}, "trainable tensors must be fp32 masters"
    if adapter != "full":
        frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
        assert torch.bfloat16 in frozen, "the frozen base under an adapter may be stored in bf16"
        # A zero-initialised B gives A (and MLAE's λ) exactly zero gradient in the first step whatever the
        # precision; start from a warmed-up adapter so every trainable element gets a gradient.
        with torch.no_grad():
            for name, p in trainable.items():
                if name.endswith(("lora_B.default.weight", "mlae_B")):
                    p.normal_(0.0, 0.02)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    assert trainer.args.bf16, "the step must run under bf16 autocast"
    result = session.run()
    assert result.steps == 1
    changed = total = 0
    for name, p in trainer.model.named_parameters():
        if name in before:
            assert p.dtype == torch.float32
            changed += int((p.detach() != before[name]).sum())
            total += p.numel()
    fraction = changed / total
    assert fraction >= MIN_CHANGED, f"{adapter}: only {fraction:.2%} of {total} trainable elements changed"
    if adapter == "mlae":
        lambdas = [p for n, p in trainer.model.named_parameters() if n.endswith("mlae_lambda")]
        assert lambdas and all(p.dtype == torch.float32 for p in lambdas)
    # The folder the training step writes keeps fp32 weights.
    from safetensors import safe_open

    weights = sorted(result.model_dir.glob("*.safetensors"))
    assert weights
    with safe_open(str(weights[0]), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F32"}, dtypes
