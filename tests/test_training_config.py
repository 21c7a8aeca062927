"""The training config: one typed object from YAML to the trainer, validated once; TRL's options by name."""

from __future__ import annotations

import pytest
from helpers import REPO, cpu_training_config, make_prepared, recipe_training_block

from medloc_core.training.config import TrainingConfig
from medloc_core.training.trainer import build_grpo_config


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="bogus\n  Extra inputs are not permitted"):
        TrainingConfig.model_validate({"bogus": 1})
    with pytest.raises(ValueError, match="multiple of num_generations"):
        TrainingConfig.model_validate({"num_generations": 4, "per_device_train_batch_size": 6})
    with pytest.raises(ValueError, match="schedule"):
        TrainingConfig.model_validate({"schedule": "cosine"})
    with pytest.raises(ValueError, match="only applies to schedule 'medloc'"):
        TrainingConfig.model_validate({"schedule": "fixed", "curriculum": {"window": 5}})
    with pytest.raises(ValueError, match="only applies to schedule 'medloc_spread'"):
        TrainingConfig.model_validate({"schedule": "medloc", "spread": {"window": 5}})
    spread = TrainingConfig.model_validate({"schedule": "medloc_spread", "spread": {"tau0": 0.25}})
    assert spread.spread_settings.tau0 == 0.25 and spread.curriculum is None
    with pytest.raises(ValueError, match="spread.target_hit_rate"):
        TrainingConfig.model_validate({"schedule": "medloc_spread", "spread": {"target_hit_rate": 1.5}})
    with pytest.raises(ValueError, match="dynamic_sampling_draws"):
        TrainingConfig.model_validate({"dynamic_sampling": True, "dynamic_sampling_draws": 1})
    with pytest.raises(ValueError, match="learning_rate"):
        TrainingConfig.model_validate({"learning_rate": "fast"})
    with pytest.raises(ValueError, match="curriculum.windw"):
        TrainingConfig.model_validate({"curriculum": {"windw": 3}})
    with pytest.raises(ValueError, match="target_modules"):
        TrainingConfig.model_validate({"target_modules": []})
    assert TrainingConfig(target_modules=r".*\.q_proj").target_modules_arg == r".*\.q_proj"
    with pytest.raises(ValueError, match="torch_threads"):
        TrainingConfig(torch_threads=0)
    cfg = TrainingConfig.model_validate({"learning_rate": "1e-6", "max_steps": 10.0})
    assert cfg.learning_rate == 1e-6 and cfg.max_steps == 10 and isinstance(cfg.max_steps, int)
    assert TrainingConfig().beta == 0.04  # VLM-R1's value (A7), not the digest's 0.4


def test_repo_configs_load() -> None:
    gpu = TrainingConfig.model_validate(recipe_training_block("medloc_training_gpu.yaml"))
    assert gpu.model_name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert (gpu.num_generations, gpu.temperature, gpu.learning_rate, gpu.beta) == (8, 0.9, 1e-6, 0.04)
    assert gpu.bf16 and gpu.gradient_checkpointing and not gpu.use_cpu
    assert gpu.curriculum_settings.tau0 == 0.3
    local = TrainingConfig.model_validate(recipe_training_block("medloc_training_local.yaml"))
    assert local.model_name_or_path == "tiny-grounder" and local.is_tiny and local.use_cpu
    assert local.sft_warmup_steps > 0 and local.sft_stop_hit_rate is not None
    assert local.per_device_train_batch_size % local.num_generations == 0


def test_vllm_requested_without_vllm_is_a_clear_error(tmp_path) -> None:
    pytest.importorskip("trl")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(ValueError, match="vLLM is not installed"):
        build_grpo_config(cpu_training_config(use_vllm=True), tmp_path, [1.0, 1.0])


def test_grpo_config_passes_shared_fields_by_name_and_the_trl_block_through(tmp_path) -> None:
    from medloc_core.training.trainer import build_grpo_config

    cfg = cpu_training_config(
        top_k=50,
        temperature=0.7,
        lr_scheduler_type="linear",
        trl={"epsilon_high": 0.28, "mask_truncated_completions": True},
    )
    args = build_grpo_config(cfg, tmp_path, [1.0, 0.5])
    assert (args.top_k, args.temperature, args.lr_scheduler_type) == (50, 0.7, "linear")
    assert (args.epsilon_high, args.mask_truncated_completions) == (0.28, True)
    assert args.reward_weights == [1.0, 0.5] and args.use_bias_correction_kl is False
    with pytest.raises(ValueError, match="'epsilon_hi' is not a TRL GRPOConfig option"):
        cpu_training_config(trl={"epsilon_hi": 0.3})
    with pytest.raises(ValueError, match="'beta' is set by the pipeline or by training.beta"):
        cpu_training_config(trl={"beta": 0.1})


def test_the_run_config_is_validated_once_from_yaml_to_the_trainer(tmp_path) -> None:
    """The `training:` block is parsed once (when the run is composed); the step's frame from the manifest and
    the trainer reuse that object (`model_copy`), and `accelerate launch` children read its JSON dump."""
    from medloc_core import run_config
    from medloc_core.run_config import FROM_PREPROCESSING
    from medloc_core.training.session import prepare_training

    before = TrainingConfig.validations
    blocks = run_config.load_run_config(REPO / "configs" / "medloc_training_local.yaml")
    assert TrainingConfig.validations == before + 1
    config = blocks["training"]
    frame = {k: getattr(blocks["preprocessing"], k) for k in FROM_PREPROCESSING}
    small = {
        "sft_warmup_steps": 0,
        "max_steps": 1,
        "tiny_model_dir": str(tmp_path / "models"),
        "progress": False,
    }
    train_config = config.model_copy(update={**frame, **small})  # what steps/train.py does with the manifest
    session = prepare_training(make_prepared(tmp_path / "img", n=8), train_config, tmp_path / "out")
    assert session.config is train_config
    assert session.schedule.config is config.spread  # the parsed schedule block is the one that runs
    assert TrainingConfig.validations == before + 1
    assert TrainingConfig.model_validate_json(train_config.model_dump_json()) == train_config


def test_medloc_train_reads_a_run_config_or_a_training_config_dump(tmp_path) -> None:
    from medloc_core.cli.train import load_training_config

    recipe = REPO / "configs" / "medloc_training_local.yaml"
    block = load_training_config(recipe, ["max_steps=7"])
    assert block == {**recipe_training_block("medloc_training_local.yaml"), "max_steps": 7}
    dump = (
        tmp_path / "training_config.json"
    )  # what training/launch.py writes for `accelerate launch` children
    config = TrainingConfig.model_validate(block)
    dump.write_text(config.model_dump_json(exclude={"accelerate"}))
    assert TrainingConfig.model_validate(load_training_config(dump)) == config
    bare = tmp_path / "bare.yaml"
    bare.write_text("max_steps: 3\n")
    with pytest.raises(ValueError, match="parameters.training"):
        load_training_config(bare)
