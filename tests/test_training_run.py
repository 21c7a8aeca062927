"""GRPO training runs on the tiny offline Qwen2.5-VL after one SFT warm-up: the curriculum trace, kill and resume,
adapters, the GPU recipe's options, per-dataset thresholds and MedGRPO, accelerate launch, damaged checkpoints."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from helpers import CrashAt, Hooks, cpu_training_config, make_prepared, recipe_training_block

from medloc_core.training.config import TrainingConfig

REQUIRED_METRICS = {
    "curriculum/threshold",
    "curriculum/hit_rate",
    "curriculum/reward_std",
    "curriculum/iou_margin",
    "curriculum/raised",
    "curriculum/num_raises",
    "curriculum/cond_reward",
    "curriculum/cond_stability",
    "curriculum/cond_margin",
    "train/frac_reward_zero_std",
    "train/reward",
    "train/reward_std",
    "train/loss",
    "train/grad_norm",
    "train/parse_failure_rate",
    "train/iou_mean",
    "train/rewards/iou_accuracy_reward/mean",
    "train/rewards/format_reward/mean",
}
FORCED = {"window": 2, "use_reward_check": False, "use_stability_check": False, "use_margin_check": False}


# ------------------------------------------------------------------------------------------ GRPO runs


@pytest.mark.slow
def test_grpo_after_sft_warmup_logs_the_curriculum_every_step(sft_run) -> None:
    from medloc_core.model import loading

    res, sink, hooks = sft_run["result"], sft_run["sink"], sft_run["hooks"]
    assert res.sft["steps"] == 80 and res.sft["last_loss"] < 0.5 * res.sft["first_loss"]
    assert res.steps == 3 and [s for s, _ in sink] == [1, 2, 3]
    assert [r["step"] for r in res.history] == [1, 2, 3]
    for _step, metrics in sink:
        assert REQUIRED_METRICS <= set(metrics), REQUIRED_METRICS - set(metrics)
        assert metrics["curriculum/threshold"] == 0.3  # window 30 cannot fill in 3 steps: no raise
        assert math.isfinite(metrics["train/loss"])
        assert math.isfinite(metrics["train/grad_norm"]) and metrics["train/grad_norm"] > 0
        assert 0.0 <= metrics["train/parse_failure_rate"] < 1.0  # the warm-up made boxes parseable
        assert 0.0 <= metrics["train/dead_all_hit"] + metrics["train/dead_all_miss"] <= 1.0
    lines = (sft_run["out"] / "history.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
    # generate + loss forward each encode the image: at least two vision-tower calls per step.
    assert hooks.vision_calls >= 2 * res.steps
    assert res.seconds_per_step > 0 and res.peak_rss_mb > 100
    assert res.final_threshold == 0.3 and res.num_raises == 0
    model = loading.load_model(res.model_dir)
    proc = loading.load_processor(res.model_dir)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration" and proc.image_processor is not None
    summary = json.loads((res.model_dir / "medloc_training.json").read_text())
    assert summary["steps"] == 3 and summary["config"]["schedule"] == "medloc"


@pytest.mark.slow
def test_forced_ready_stream_raises_tau_and_kill_resume_restores_state(sft_run, data, tmp_path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText

    from medloc_core.training.session import prepare_training, train

    out = tmp_path / "run"
    cfg = cpu_training_config(
        model_name_or_path=str(sft_run["sft"]),
        max_steps=5,
        save_steps=2,
        curriculum=FORCED,
        learning_rate=1e-3,
    )
    with pytest.raises(KeyboardInterrupt):
        train(data, cfg, out, callbacks=[CrashAt(3).callback])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    saved = json.loads((out / "checkpoint-2" / "curriculum_state.json").read_text())
    # Window of 2 with every check disabled: step 2 fills the window and raises 0.3 -> 0.45.
    assert saved["global_step"] == 2 and saved["schedule"]["tau"] == 0.45
    assert saved["schedule"]["num_raises"] == 1 and len(saved["schedule"]["window"]) == 1
    crashed_rows = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in crashed_rows] == [1, 2]  # step 3 crashed before it was logged

    hooks = Hooks()
    session = prepare_training(data, cfg, out, metrics_sink=lambda m, s: None, callbacks=[hooks.callback])
    assert session.resume_checkpoint == str(out / "checkpoint-2")
    assert session.schedule.state_dict() == saved["schedule"]  # τ, window, raise count, step counter
    result = session.run()
    assert hooks.start_step == 2
    ckpt = AutoModelForImageTextToText.from_pretrained(out / "checkpoint-2").state_dict()
    base = AutoModelForImageTextToText.from_pretrained(sft_run["sft"]).state_dict()
    assert set(ckpt) == set(hooks.snapshot)
    assert all(torch.equal(ckpt[k], hooks.snapshot[k]) for k in ckpt)  # weights restored exactly
    assert not all(torch.equal(base[k], ckpt[k]) for k in ckpt)  # ...and they are not the starting weights

    rows = result.history
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["curriculum/threshold"] for r in rows] == [0.3, 0.3, 0.45, 0.6, 0.7]  # raise applies next step
    assert [r["curriculum/raised"] for r in rows] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert [r["curriculum/num_raises"] for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert result.final_threshold == 0.8 and result.num_raises == 4 and result.steps == 5


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["lora", "mlae"])
def test_adapters_train_only_adapter_params_and_resume(adapter, sft_run, data, tmp_path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from medloc_core.model import loading, mlae
    from medloc_core.training.session import prepare_training, train

    base = AutoModelForImageTextToText.from_pretrained(sft_run["sft"]).state_dict()
    out = tmp_path / adapter
    cfg = cpu_training_config(
        model_name_or_path=str(sft_run["sft"]),
        adapter=adapter,
        max_steps=3,
        save_steps=1,
        learning_rate=5e-3,
        lora_r=4,
        lora_alpha=8,
        mlae_drop_rate=0.25,
        format_partial_credit=True,
    )
    with pytest.raises(KeyboardInterrupt):
        train(data, cfg, out, callbacks=[CrashAt(2).callback])
    ckpt = out / "checkpoint-1"
    weights_file = "adapter_model.safetensors" if adapter == "lora" else mlae.MLAE_WEIGHTS_NAME
    saved = load_file(str(ckpt / weights_file))
    assert saved, "checkpoint holds adapter tensors"

    hooks = Hooks()
    session = prepare_training(data, cfg, out, metrics_sink=lambda m, s: None, callbacks=[hooks.callback])
    model = session.trainer.model
    session.run()
    # The adapter tensors at restart are exactly the checkpoint's.
    live = hooks.snapshot
    for key, value in saved.items():
        match = [k for k in live if k.replace(".default", "").endswith(key.split("base_model.model.")[-1])]
        assert len(match) == 1, (key, match[:3])
        assert torch.equal(live[match[0]], value)
    # Adapter parameters moved away from their zero init; the base weights did not change.
    if adapter == "lora":
        b_norm = sum(p.abs().sum().item() for n, p in model.named_parameters() if "lora_B" in n)
        frozen = {
            n.replace("base_model.model.", "").replace(".base_layer", ""): p
            for n, p in model.named_parameters()
        }
    else:
        b_norm = sum(m.mlae_B.abs().sum().item() for m in mlae.mlae_modules(model).values())
        lam = [m.mlae_lambda for m in mlae.mlae_modules(model).values()]
        assert any(not torch.equal(v, torch.full_like(v, 8.0)) for v in lam)
        frozen = {n.replace(".base_layer", ""): p for n, p in model.named_parameters()}
    assert b_norm > 0
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(("lora_" in n) or ("mlae_" in n) for n in trainable)
    checked = 0
    for name, value in base.items():
        if name in frozen:
            assert torch.equal(frozen[name].detach(), value), name
            checked += 1
    assert checked >= 0.9 * len(base)
    # final/ is a merged plain model plus the adapter folder.
    final = out / "final"
    assert (
        final / "adapter" / ("adapter_config.json" if adapter == "lora" else mlae.MLAE_CONFIG_NAME)
    ).is_file()
    merged = loading.load_model(final)
    assert not mlae.mlae_modules(merged) and not any("lora_" in n for n, _ in merged.named_parameters())
    # The adapter folder alone also loads (base model from its config, adapter merged) to the same weights.
    from_adapter = loading.load_model(final / "adapter").state_dict()
    assert all(torch.allclose(from_adapter[k], v, atol=1e-6) for k, v in merged.state_dict().items())
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, base[k])]
    assert changed and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed)


@pytest.mark.slow
def test_gpu_config_options_build_and_step_on_cpu(sft_run, data, tmp_path) -> None:
    from medloc_core.training.session import prepare_training

    section = recipe_training_block("medloc_training_gpu.yaml")
    # Everything from the GPU config except what needs a GPU (bf16, vLLM) and the 3B weights.
    section.update(
        model_name_or_path=str(sft_run["sft"]),
        bf16=False,
        use_vllm=False,
        use_cpu=True,
        max_steps=1,
        max_completion_length=24,
        save_steps=0,
        progress=False,
    )
    session = prepare_training(
        data, TrainingConfig.model_validate(section), tmp_path / "gpu", metrics_sink=lambda m, s: None
    )
    args = session.trainer.args
    assert (args.num_generations, args.temperature, args.learning_rate, args.beta) == (8, 0.9, 1e-6, 0.04)
    assert args.gradient_checkpointing and args.gradient_accumulation_steps == 2
    assert session.trainer.ref_model is not None  # beta > 0 with full fine-tuning: a frozen reference model
    assert session.schedule.config.window == 30 and session.schedule.threshold == 0.3
    result = session.run()
    assert result.steps == 1 and math.isfinite(result.history[0]["train/loss"])


@pytest.mark.slow
def test_per_dataset_thresholds_and_medgrpo_normalization(sft_run, tmp_path) -> None:
    from medloc_core.training.session import train

    data = make_prepared(tmp_path / "img", n=18, datasets=("ham", "tn3k"))
    seen: list[dict] = []
    cfg = cpu_training_config(
        model_name_or_path=str(sft_run["sft"]),
        schedule="raw_iou",
        medgrpo_normalization=True,
        medgrpo_fit_samples=4,
        max_steps=2,
    )
    res = train(data, cfg, tmp_path / "medgrpo", metrics_sink=lambda m, s: seen.append(m))
    stats = json.loads((tmp_path / "medgrpo" / "medgrpo_stats.json").read_text())
    assert sorted(stats) == ["ham", "tn3k"] and all(
        len(q) == 3 and q[0] <= q[1] <= q[2] for q in stats.values()
    )
    assert "train/rewards/medgrpo_raw_iou_reward/mean" in seen[0]
    assert "curriculum/threshold" not in seen[0]  # raw IoU has no threshold
    assert res.final_threshold is None

    cfg = cpu_training_config(
        model_name_or_path=str(sft_run["sft"]), per_dataset_thresholds=True, curriculum=FORCED, max_steps=3
    )
    seen.clear()
    res = train(data, cfg, tmp_path / "perds", metrics_sink=lambda m, s: seen.append(m))
    for m in seen:
        assert {"curriculum/ham/threshold", "curriculum/tn3k/threshold"} <= set(m)
        assert REQUIRED_METRICS <= set(m)
    assert seen[0]["curriculum/ham/threshold"] == 0.3 and seen[0]["curriculum/tn3k/threshold"] == 0.3
    # Window 2, checks off: a dataset raises on its second observed step; with 3 steps one of the two datasets
    # must appear in at least 2 of them.
    assert res.num_raises >= 1
    last = seen[-1]
    assert last["curriculum/threshold"] == pytest.approx(
        (last["curriculum/ham/threshold"] + last["curriculum/tn3k/threshold"]) / 2
    )


@pytest.mark.slow
def test_accelerate_launch_two_cpu_ranks_log_once_into_the_parent_mlflow_run(sft_run, data, tmp_path) -> None:
    """The multi-GPU path, run as two gloo ranks on CPU: the SFT warm-up (with its early-stop check) on rank 0,
    reused by rank 1, then GRPO: one writer, one MLflow run, τ raised in step."""
    import mlflow

    from medloc_core.training.launch import launch_training

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("launch")  # earlier tests may leave another store's experiment id active
    cfg = {
        "model_name_or_path": str(sft_run["sft"]),
        "progress": False,
        "beta": 0.0,
        "save_steps": 0,
        "max_steps": 3,
        "max_completion_length": 24,
        "per_device_train_batch_size": 4,
        "curriculum": dict(FORCED),
        "dynamic_sampling": True,  # its extra draws are decided together by both ranks
        "sft_warmup_steps": 4,
        "sft_batch_size": 2,
        "sft_learning_rate": 1e-3,
        "sft_stop_hit_rate": 1.0,
        "sft_check_every": 2,
    }
    prepared = data.copy()
    prepared.loc[prepared.index[:2], "split"] = "val"  # the early-stop check's rows
    try:
        with mlflow.start_run() as run:
            result = launch_training(
                prepared,
                TrainingConfig.model_validate(cfg),
                tmp_path / "out",
                accelerate={"num_processes": 2, "cpu": True},
                mlflow_run_id=run.info.run_id,
            )
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert result["num_processes"] == 2 and result["steps"] == 3
    # The bar (1.0) is out of reach: one check at step 2 (not at 4, the last step), all 4 steps run.
    sft = result["sft"]
    assert sft["steps"] == 4 and not sft["stopped_early"] and [c[0] for c in sft["val_checks"]] == [2]
    assert len(sft["losses"]) == 4 and (tmp_path / "out" / "sft" / "config.json").is_file()
    assert [row["step"] for row in result["history"]] == [1, 2, 3]  # rank 1 wrote no duplicate rows
    assert all(row["train/dynamic_sampling/draws"] >= 1 for row in result["history"])
    history = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "curriculum/threshold")
    assert sorted(m.step for m in history) == [1, 2, 3]
    # FORCED: every full window raises, so τ must have left its start value by step 3 on the logged trace.
    thresholds = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert thresholds[0] == 0.3 and thresholds[-1] > 0.3
    assert result["final_threshold"] > thresholds[-1] - 1e-9
    # TRL's own reporting (report_to="mlflow") from rank 0 into the same run, once per step
    for key in ("loss", "reward", "completions/mean_length"):
        points = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in points) == [1, 2, 3], key


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_resumes_from_the_previous_one(sft_run, data, tmp_path) -> None:
    """Two real checkpoints (save_total_limit 2); the newest one's optimizer state is truncated. Re-running
    resumes from the older one with a warning (today: a crash on every re-run) and finishes all steps."""
    from medloc_core.training.session import prepare_training, train

    out = tmp_path / "run"
    cfg = cpu_training_config(
        model_name_or_path=str(sft_run["sft"]), max_steps=6, save_steps=2, save_total_limit=2
    )
    with pytest.raises(KeyboardInterrupt):
        train(data, cfg, out, callbacks=[CrashAt(5).callback])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    optimizer = out / "checkpoint-4" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])

    session = prepare_training(data, cfg, out, metrics_sink=lambda m, s: None)
    assert session.resume_checkpoint == str(out / "checkpoint-2")
    assert (out / "damaged-checkpoint-4").is_dir() and not (out / "checkpoint-4").exists()
    result = session.run()
    assert [r["step"] for r in result.history] == [1, 2, 3, 4, 5, 6] and result.steps == 6
    # rotation kept the two newest complete checkpoints
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
