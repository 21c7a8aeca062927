"""MLAE (masked rank-1 LoRA experts): formulation, expert dropout, merge, save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medloc_core.model import mlae


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(6, 5)
        self.block = nn.Module()
        self.block.v_proj = nn.Linear(5, 4, bias=False)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block.v_proj(self.q_proj(x)))


def _toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


def test_apply_replaces_targets_freezes_base_and_starts_at_identity() -> None:
    model = _toy()
    x = torch.randn(7, 6)
    before = model(x).detach()
    names = mlae.apply_mlae(model, ["q_proj", "v_proj"], r=3, lora_alpha=2.5, drop_rate=0.0)
    assert names == ["block.v_proj", "q_proj"]
    assert isinstance(model.q_proj, mlae.MLAELinear) and isinstance(model.head, nn.Linear)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == [
        "block.v_proj.mlae_A",
        "block.v_proj.mlae_B",
        "block.v_proj.mlae_lambda",
        "q_proj.mlae_A",
        "q_proj.mlae_B",
        "q_proj.mlae_lambda",
    ]
    assert model.q_proj.mlae_A.shape == (3, 6) and model.q_proj.mlae_B.shape == (3, 5)
    assert torch.equal(model.q_proj.mlae_lambda, torch.full((3,), 2.5))
    assert torch.count_nonzero(model.q_proj.mlae_B) == 0 and torch.count_nonzero(model.q_proj.mlae_A) == 18
    # B = 0: the adapted model equals the base model (the GRPO reference policy) at init.
    assert torch.allclose(model(x), before)


def test_forward_matches_the_expert_formula_in_eval_and_with_a_mask() -> None:
    model = _toy()
    mlae.apply_mlae(model, ["q_proj"], r=4, lora_alpha=1.0, drop_rate=0.5)
    layer = model.q_proj
    with torch.no_grad():
        layer.mlae_B.normal_()
        layer.mlae_lambda.copy_(torch.tensor([0.5, -1.0, 2.0, 3.0]))
    x = torch.randn(3, 6)
    base = layer.base_layer(x)
    layer.eval()
    expected = base + sum(
        layer.mlae_lambda[i] * (x @ layer.mlae_A[i])[:, None] * layer.mlae_B[i][None, :] for i in range(4)
    )
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert torch.allclose(
        layer.delta_weight(), layer.mlae_B.t() @ torch.diag(layer.mlae_lambda) @ layer.mlae_A
    )

    layer.train()
    torch.manual_seed(123)
    out = layer(x)
    torch.manual_seed(123)
    keep = torch.bernoulli(torch.full((4,), 0.5))
    scales = layer.mlae_lambda * keep / 0.5
    manual = base + ((x @ layer.mlae_A.t()) * scales) @ layer.mlae_B
    assert torch.allclose(out, manual, atol=1e-5)


def test_expert_dropout_is_inverted_and_resampled() -> None:
    model = _toy()
    mlae.apply_mlae(model, ["q_proj"], r=8, lora_alpha=1.0, drop_rate=0.25)
    layer = model.q_proj
    layer.train()
    torch.manual_seed(0)
    samples = torch.stack([layer.expert_scales().detach() for _ in range(4000)])
    kept = samples != 0
    assert torch.unique(samples).tolist() == pytest.approx([0.0, 1.0 / 0.75])
    assert 0.72 < kept.float().mean().item() < 0.78
    assert abs(samples.mean().item() - 1.0) < 0.03  # E[m̃ λ] = λ
    layer.eval()
    assert torch.equal(layer.expert_scales(), layer.mlae_lambda)


def test_merge_equals_eval_output_and_restores_plain_linear() -> None:
    model = _toy()
    mlae.apply_mlae(model, ["q_proj", "v_proj"], r=2, lora_alpha=4.0, drop_rate=0.3)
    with torch.no_grad():
        for m in mlae.mlae_modules(model).values():
            m.mlae_B.normal_()
    model.eval()
    x = torch.randn(5, 6)
    expected = model(x).detach()
    merged = mlae.merge_mlae(model)
    assert merged == ["block.v_proj", "q_proj"]
    assert type(model.q_proj) is nn.Linear and type(model.block.v_proj) is nn.Linear
    assert not mlae.mlae_modules(model)
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_save_load_round_trip_and_mismatch(tmp_path) -> None:
    model = _toy()
    mlae.apply_mlae(model, ["q_proj", "v_proj"], r=3, lora_alpha=2.0, drop_rate=0.1)
    with torch.no_grad():
        for m in mlae.mlae_modules(model).values():
            m.mlae_B.normal_()
            m.mlae_lambda.add_(0.25)
    mlae.save_mlae(model, tmp_path / "ad", base_model="some/base")
    fresh = _toy()  # same base weights, no MLAE yet: load_mlae applies it from the saved config
    loaded = mlae.load_mlae(fresh, tmp_path / "ad")
    assert loaded == ["block.v_proj", "q_proj"]
    for key, value in mlae.mlae_state_dict(model).items():
        assert torch.equal(mlae.mlae_state_dict(fresh)[key], value)
    assert fresh.q_proj.drop_rate == 0.1
    other = _toy()
    mlae.apply_mlae(other, ["q_proj"], r=3, lora_alpha=2.0)
    with pytest.raises(ValueError, match="do not match"):
        mlae.load_mlae(other, tmp_path / "ad")


def test_training_changes_only_mlae_params() -> None:
    model = _toy()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    mlae.apply_mlae(model, ["q_proj", "v_proj"], r=2, lora_alpha=1.0, drop_rate=0.5)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    assert torch.count_nonzero(model.q_proj.mlae_B) > 0
    assert not torch.equal(model.q_proj.mlae_lambda, torch.ones(2))
    assert torch.equal(model.q_proj.base_layer.weight, base["q_proj.weight"])
    assert torch.equal(model.block.v_proj.base_layer.weight, base["block.v_proj.weight"])
    assert torch.equal(model.head.weight, base["head.weight"])


def test_errors() -> None:
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        mlae.apply_mlae(_toy(), ["nope"], r=2)
    with pytest.raises(ValueError, match="drop_rate"):
        mlae.apply_mlae(_toy(), ["q_proj"], r=2, drop_rate=1.0)
    with pytest.raises(ValueError, match="rank"):
        mlae.apply_mlae(_toy(), ["q_proj"], r=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from medloc_core.model.standin import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("mlae-tiny") / "model")


def test_rollouts_come_from_the_deterministic_policy(tiny_dir) -> None:
    """GRPO rollouts (``generate``, no grad) draw no expert mask even in training mode; the training forward
    (grad enabled) does, once per MLAE layer and forward."""
    from medloc_core.model import loading

    model = loading.load_model(tiny_dir, dtype="float32")
    names = mlae.apply_mlae(model, ["q_proj", "v_proj"], r=4, lora_alpha=1.0, drop_rate=0.5, dropout=0.3)
    layers = list(mlae.mlae_modules(model).values())
    with torch.no_grad():
        for layer in layers:
            layer.mlae_B.normal_(std=0.5)  # experts that change the output, so a mask would show
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}

    model.eval()
    reference = model.generate(input_ids=ids, **kwargs)
    model.train()
    torch.manual_seed(0)
    rollout = model.generate(input_ids=ids, **kwargs)
    assert sum(layer.mask_draws for layer in layers) == 0
    assert torch.equal(rollout, reference)  # all experts on, no input dropout: the eval-mode policy

    model(input_ids=rollout).logits.sum().backward()
    assert [layer.mask_draws for layer in layers] == [1] * len(names)
