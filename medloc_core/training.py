"""GRPO training of a Qwen2.5-VL grounder with TRL and the MedLoc-R1 IoU curriculum.

Wiring (``train``):

1. The ``split == "train"`` rows of a prepared DataFrame become a TRL dataset: ``prompt`` (chat messages from
   ``prompts.chat_messages``), ``image`` (PIL, resized to the row's model-input frame), ``bbox``
   (``[in_x1, in_y1, in_x2, in_y2]``, model-input-frame pixels, xyxy), ``dataset``, ``record_id``.
2. Optional SFT warm-up (``medloc_core.sft``) writes ``output_dir/sft``; GRPO then starts from it (and, with
   ``beta > 0``, uses it as the reference policy, as VLM-R1 does when RL starts from an SFT checkpoint).
3. ``GRPOTrainer`` gets the format reward and the accuracy reward of the chosen schedule
   (``medloc_core.rewards``). The reward reads τ from the schedule when a batch is scored; a
   :class:`CurriculumCallback` pops the :class:`~medloc_core.rewards.RewardTracker` after every optimizer step,
   gathers the IoUs of all ranks (methods.md A13), feeds them to ``schedule.observe`` and so a raise applies
   from the next batch on (A2). It emits one metrics dict per step to ``metrics_sink`` and
   ``output_dir/history.jsonl``.
4. Checkpoints (``save_steps``) hold the trainer state plus ``curriculum_state.json``; ``resume=True`` continues
   from the last one with τ, the window, the raise count, the step and the weights restored. Full fine-tuning
   works around transformers#43701 (Trainer's resume skips Qwen2.5-VL's key conversion and silently keeps the
   old weights) by loading the checkpoint through ``from_pretrained``; MLAE checkpoints store only MLAE tensors.
5. ``output_dir/final`` holds a plain (adapter-merged) model and the processor, loadable with
   ``modeling.load_model`` + ``modeling.load_processor``; LoRA/MLAE adapters are also kept in
   ``final/adapter``.

KL β defaults to 0.04 (VLM-R1's value); the MedLoc-R1 digest says 0.4 (ambiguity A7 in methods.md §1(i)).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import resource
import shutil
import sys
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medloc_core import prompts
from medloc_core.checkpoints import CURRICULUM_STATE_NAME
from medloc_core.curriculum import SCHEDULE_NAMES

logger = logging.getLogger(__name__)

MetricsSink = Callable[[dict[str, float], int], None]

SCHEDULES = SCHEDULE_NAMES  # one list: medloc_core.curriculum
ADAPTERS = ("full", "lora", "mlae")
TINY_ALIASES = {"tiny": "tiny", "tiny-small": "small", "tiny-grounder": "grounder"}
HISTORY_NAME = "history.jsonl"
SFT_DONE_NAME = "medloc_sft.json"
MEDGRPO_STATS_NAME = "medgrpo_stats.json"
REQUIRED_COLUMNS = (
    "record_id",
    "dataset",
    "image_path",
    "split",
    "prompt_text",
    "label",
    "input_width",
    "input_height",
    "in_x1",
    "in_y1",
    "in_x2",
    "in_y2",
)
# Keys the curriculum contributes per step (system.md); the schedule's stats key -> metric name.
_CURRICULUM_STATS = {
    "hit_rate": "curriculum/hit_rate",
    "reward_std": "curriculum/reward_std",
    "iou_margin": "curriculum/iou_margin",
    "cond_reward": "curriculum/cond_reward",
    "cond_stability": "curriculum/cond_stability",
    "cond_margin": "curriculum/cond_margin",
}
# TRL log key -> our metric name.
_TRL_KEYS = {
    "loss": "train/loss",
    "grad_norm": "train/grad_norm",
    "reward": "train/reward",
    "reward_std": "train/reward_std",
    "frac_reward_zero_std": "train/frac_reward_zero_std",
    "learning_rate": "train/learning_rate",
    "kl": "train/kl",
    "entropy": "train/entropy",
    "completions/mean_length": "train/completion_length",
    "completions/clipped_ratio": "train/clipped_ratio",
}


@dataclass
class TrainingConfig:
    """Everything that shapes a GRPO run. Learning rates are per optimizer step; lengths are in tokens.

    Model: ``model_name_or_path`` is a Hub id or folder (GPU default ``Qwen/Qwen2.5-VL-3B-Instruct``), or
    ``"tiny"`` / ``"tiny-small"`` / ``"tiny-grounder"`` (the CPU stand-in that learns to localize, see
    ``modeling.TINY_SIZES``) to build the offline model once under ``tiny_model_dir``.
    ``min_pixels``/``max_pixels`` (optional) set the processor's resize bounds; they must agree with the frame
    the data was preprocessed for (checked per row).

    Reward: ``schedule`` is ``medloc`` (curriculum; ``curriculum`` holds ``CurriculumConfig`` fields),
    ``fixed`` (τ = ``fixed_tau``), ``raw_iou`` or ``vtriune``. ``per_dataset_thresholds`` runs one schedule per
    dataset. ``medgrpo_normalization`` passes the accuracy reward through MedGRPO's per-dataset logistic, with
    quartiles fitted on completions of the starting (SFT or base) model on up to ``medgrpo_fit_samples``
    train rows before GRPO, and kept fixed (methods.md §4). The quartiles are of the accuracy reward itself
    (IoU for ``raw_iou``; 0/1 hits at τ0 for thresholded schedules, where the logistic is close to a step and
    the fitted quartiles go stale as τ rises: use it with ``raw_iou`` or ``vtriune``). With per-dataset
    thresholds each dataset's IoUs of a step form one window entry of its schedule. The format reward (VLM-R1) is added when
    ``format_reward``; it requires ``<think>`` when ``answer_style == "think"`` unless ``format_require_think``
    says otherwise. ``reward_parser`` says how rewards read a completion: ``vlmr1`` (default: VLM-R1's REC
    regexes, integers only, first closed answer block) or ``lenient`` (``boxes.parse_box``'s evaluation
    parser). ``reward_mix``: ``sum`` (TRL's weighted sum with ``accuracy_weight``/``format_weight``; VLM-R1's
    plain sum with the default weights 1) or ``vtriune`` ((1·accuracy + 0.1·format) / 1.1, V-Triune's code);
    None picks ``vtriune`` for the ``vtriune`` schedule and ``sum`` otherwise.

    Sampling: ``temperature``, ``top_p`` and ``top_k`` (0 = off) for the rollouts. ``use_bias_correction_kl``
    (TRL's option, off here as in VLM-R1: the plain k3 KL term) multiplies the KL term by the importance ratio.

    TRL: a field named like a ``GRPOConfig`` field passes to TRL unchanged; ``trl`` holds any other
    ``GRPOConfig`` option under TRL's own name (e.g. ``{epsilon_high: 0.28, mask_truncated_completions: true}``).

    GRPO: ``num_generations`` completions per prompt; ``per_device_train_batch_size`` counts completions
    (a multiple of ``num_generations``). ``beta`` is the KL weight: 0.04 (VLM-R1) by default, the digest's 0.4
    is ambiguity A7. ``loss_type`` "grpo" (VLM-R1's per-sequence normalisation; TRL also has dapo, dr_grpo,
    bnpo).

    Adapters: ``full`` fine-tuning, ``lora`` (peft, on ``target_modules``) or ``mlae`` (masked rank-1 experts:
    rank ``lora_r``, λ initialised to ``lora_alpha``, expert dropout ``mlae_drop_rate``, input dropout
    ``lora_dropout``).

    CPU threads: ``torch_threads`` sets ``torch.set_num_threads`` for the process; None picks 1 for a small
    model (< 50 M parameters) on CPU (its ops are too small to gain from threads, and on a shared CPU spinning
    OpenMP threads stall each other: measured 4-7 s vs 0.1 s per SFT step under load) and leaves torch's
    default otherwise.

    SFT warm-up: ``sft_warmup_steps`` (0 = off) steps of batch ``sft_batch_size`` at ``sft_learning_rate``
    (None = 3e-3 for the tiny model, 1e-5 otherwise), ``sft_lr_scheduler_type`` ``constant`` or ``cosine``
    after a 10 % warm-up. ``sft_stop_hit_rate`` (None = run all steps) ends the warm-up early, checked every
    ``sft_check_every`` steps, once the greedy hit rate on the ``val`` split at IoU ``sft_stop_iou`` (None = the
    schedule's starting threshold: τ0, the fixed τ, or 0.5) reaches it: GRPO then starts from a policy that is in
    range of its first threshold but still has room to learn.
    """

    model_name_or_path: str = "tiny"
    tiny_model_dir: str = ".medloc/models"
    min_pixels: int | None = None
    max_pixels: int | None = None
    schedule: str = "medloc"
    curriculum: dict = field(default_factory=dict)
    fixed_tau: float = 0.5
    per_dataset_thresholds: bool = False
    medgrpo_normalization: bool = False
    medgrpo_k: float = 3.0
    medgrpo_fit_samples: int = 64
    num_generations: int = 4
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_steps: int = 60
    learning_rate: float = 3e-4
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 0.04
    epsilon: float = 0.2
    num_iterations: int = 1
    temperature: float = 0.9
    top_p: float = 1.0
    top_k: int = 0
    use_bias_correction_kl: bool = False
    max_completion_length: int = 48
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    adapter: str = "full"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: list | str = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    mlae_drop_rate: float = 0.1
    sft_warmup_steps: int = 0
    sft_learning_rate: float | None = None
    sft_batch_size: int = 8
    sft_lr_scheduler_type: str = "constant"
    sft_stop_hit_rate: float | None = None
    sft_stop_iou: float | None = None
    sft_check_every: int = 50
    bf16: bool = False
    gradient_checkpointing: bool = False
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    use_cpu: bool = False
    seed: int = 0
    save_steps: int = 50
    save_total_limit: int | None = 3
    logging_steps: int = 1
    log_completions_every: int = 50
    trl: dict = field(default_factory=dict)
    answer_style: str = "think"
    format_reward: bool = True
    format_require_think: bool | None = None
    format_partial_credit: bool = False
    format_weight: float = 1.0
    accuracy_weight: float = 1.0
    reward_parser: str = "vlmr1"
    reward_mix: str | None = None
    progress: bool = True
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        self._coerce()
        self.validate()

    def _coerce(self) -> None:
        """YAML reads ``1e-6`` as a string and ``1`` as an int: convert numeric fields, reject the rest."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            base = {float: float, int: int, float | None: float, int | None: int}.get(hint)
            if base is None or value is None or isinstance(value, bool):
                if base is not None and isinstance(value, bool):
                    raise ValueError(f"TrainingConfig.{f.name}: expected a number, got {value!r}")
                continue
            try:
                converted = base(float(value)) if base is int else float(value)
            except (TypeError, ValueError):
                raise ValueError(f"TrainingConfig.{f.name}: expected a number, got {value!r}") from None
            if base is int and float(value) != converted:
                raise ValueError(f"TrainingConfig.{f.name}: expected an integer, got {value!r}")
            setattr(self, f.name, converted)

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"TrainingConfig.{name}={getattr(self, name)!r}: {why}")

        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"must be one of {SCHEDULES}")
        if self.adapter not in ADAPTERS:
            raise bad("adapter", f"must be one of {ADAPTERS}")
        if self.answer_style not in prompts.ANSWER_STYLES:
            raise bad("answer_style", f"must be one of {prompts.ANSWER_STYLES}")
        if not isinstance(self.curriculum, Mapping):
            raise bad("curriculum", "must be a mapping of CurriculumConfig fields")
        if self.num_generations < 2:
            raise bad("num_generations", "GRPO needs at least 2 completions per prompt")
        if self.per_device_train_batch_size % self.num_generations:
            raise bad(
                "per_device_train_batch_size", f"must be a multiple of num_generations={self.num_generations}"
            )
        for name in ("max_steps", "gradient_accumulation_steps", "max_completion_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        for name in ("save_steps", "sft_warmup_steps", "warmup_steps"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.learning_rate <= 0:
            raise bad("learning_rate", "must be > 0")
        if self.beta < 0:
            raise bad("beta", "must be >= 0")
        if self.temperature <= 0:
            raise bad("temperature", "must be > 0")
        if self.top_k < 0:
            raise bad("top_k", "must be >= 0 (0 = off)")
        if self.log_completions_every < 0:
            raise bad("log_completions_every", "must be >= 0 (0 = off)")
        if not isinstance(self.trl, Mapping):
            raise bad("trl", "must be a mapping of TRL GRPOConfig options")
        if self.trl:
            mine = {f.name for f in dataclasses.fields(self)} & trl_field_names()
            for key in self.trl:
                if key in _OWNED_TRL_FIELDS or key in mine:
                    raise bad(
                        "trl", f"{key!r} is set by the pipeline or by training.{key}, not in the trl block"
                    )
                if key not in trl_field_names():
                    raise bad("trl", f"{key!r} is not a TRL GRPOConfig option")
        from medloc_core.boxes import PARSERS
        from medloc_core.rewards import REWARD_MIXES

        if self.reward_parser not in PARSERS:
            raise bad("reward_parser", f"must be one of {PARSERS}")
        if self.reward_mix is not None and self.reward_mix not in REWARD_MIXES:
            raise bad("reward_mix", f"must be one of {REWARD_MIXES} (or null: by schedule)")
        if not 0.0 <= self.fixed_tau <= 1.0:
            raise bad("fixed_tau", "must be in [0, 1]")
        if not 0.0 <= self.mlae_drop_rate < 1.0:
            raise bad("mlae_drop_rate", "must be in [0, 1)")
        tm = self.target_modules
        if not (isinstance(tm, str) and tm) and not (
            isinstance(tm, list | tuple) and tm and all(isinstance(t, str) and t for t in tm)
        ):
            raise bad("target_modules", "must be a non-empty list of module names or one regex string")
        if self.lora_r < 1:
            raise bad("lora_r", "must be >= 1")
        if (self.min_pixels is None) != (self.max_pixels is None):
            raise bad("min_pixels", "set min_pixels and max_pixels together")
        if self.min_pixels is not None and not 0 < self.min_pixels <= self.max_pixels:
            raise bad("min_pixels", "need 0 < min_pixels <= max_pixels")
        if self.schedule != "medloc" and self.curriculum:
            raise bad("curriculum", f"only applies to schedule 'medloc', not {self.schedule!r}; remove it")
        from medloc_core.sft import LR_SCHEDULES

        if self.sft_stop_hit_rate is not None and not 0.0 < self.sft_stop_hit_rate <= 1.0:
            raise bad("sft_stop_hit_rate", "must be in (0, 1] (or null: no early stop)")
        if self.sft_stop_iou is not None and not 0.0 <= self.sft_stop_iou <= 1.0:
            raise bad("sft_stop_iou", "must be in [0, 1]")
        if self.sft_check_every < 1:
            raise bad("sft_check_every", "must be >= 1")
        if self.sft_lr_scheduler_type not in LR_SCHEDULES:
            raise bad("sft_lr_scheduler_type", f"must be one of {LR_SCHEDULES}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise bad("torch_threads", "must be >= 1 (or null for the automatic choice)")
        if self.medgrpo_normalization and self.medgrpo_fit_samples < 1:
            raise bad("medgrpo_fit_samples", "must be >= 1")

    def curriculum_config(self):
        """The ``CurriculumConfig`` built from ``curriculum`` (unknown keys raise)."""
        from medloc_core.curriculum import CurriculumConfig

        return CurriculumConfig.from_dict(dict(self.curriculum))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingConfig:
        """Build from a mapping (YAML/JSON). Unknown keys are an error, listing the valid ones."""
        if not isinstance(data, Mapping):
            raise ValueError(f"TrainingConfig.from_dict expects a mapping, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"TrainingConfig: unknown key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def target_modules_arg(self) -> list[str] | str:
        """Module-name suffixes as a list, or one regex over full module names (peft's convention)."""
        return self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)

    @property
    def resolved_reward_mix(self) -> str:
        """``reward_mix``, or V-Triune's mix for the ``vtriune`` schedule and ``sum`` otherwise."""
        if self.reward_mix is not None:
            return self.reward_mix
        return "vtriune" if self.schedule == "vtriune" else "sum"

    @property
    def is_tiny(self) -> bool:
        name = str(self.model_name_or_path)
        return name in TINY_ALIASES or any(f"qwen25vl-{size}-" in name for size in TINY_ALIASES.values())


@dataclass
class TrainingResult:
    """Outcome of :func:`train`. ``history`` has one dict per optimizer step (the metrics of that step plus
    ``step``); ``seconds_per_step`` is the mean wall time of GRPO steps after the first; ``peak_rss_mb`` the
    process's peak resident memory (MiB, ``getrusage``)."""

    model_dir: Path
    history: list[dict[str, Any]]
    final_threshold: float | None
    num_raises: int
    steps: int
    seconds_per_step: float
    peak_rss_mb: float
    sft: dict[str, Any] | None = None
    medgrpo_stats: dict[str, list[float]] | None = None
    resumed_from: str | None = None


# ------------------------------------------------------------------------------------------------ sinks


def default_metrics_sink(metrics: dict[str, float], step: int) -> None:
    """Log to the active MLflow run, if there is one (mlflow is only consulted when already imported).

    Asynchronous: a synchronous write to a SQLite store costs ~15 ms, ~5 % of a tiny-model CPU step
    (``bench/overhead.py``); MLflow flushes the queue when the run ends.
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.log_metrics(metrics, step=step, synchronous=False)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# ------------------------------------------------------------------------------------------------- data


def _check_columns(df: Any) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"prepared data is missing column(s) {missing} (have {list(df.columns)})")


def train_rows(prepared_df: Any, split: str = "train") -> Any:
    """The ``split == "train"`` rows (or another ``split``'s), validated (input-frame boxes finite with x1 < x2,
    y1 < y2; frame sizes positive; prompt text present). Errors name the record."""
    _check_columns(prepared_df)
    rows = prepared_df[prepared_df["split"] == split].reset_index(drop=True)
    if rows.empty:
        splits = sorted(map(str, prepared_df["split"].unique()))
        raise ValueError(f"prepared data has no split=={split!r} rows (splits present: {splits})")
    for i, r in rows.iterrows():
        box = [r["in_x1"], r["in_y1"], r["in_x2"], r["in_y2"]]
        where = f"record_id={r['record_id']!r} ({split} row {i})"
        try:
            box = [float(v) for v in box]
            w, h = int(r["input_width"]), int(r["input_height"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: in_x1..in_y2 / input_width / input_height must be numbers") from None
        if not all(math.isfinite(v) for v in box) or not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"{where}: input-frame box {box} is not a finite x1<x2, y1<y2 box")
        if w <= 0 or h <= 0:
            raise ValueError(f"{where}: input frame {w}x{h} is empty")
        if not isinstance(r["prompt_text"], str) or not r["prompt_text"].strip():
            raise ValueError(f"{where}: prompt_text is empty")
    return rows


def _load_image(path: str, size: tuple[int, int], where: str):
    from PIL import Image

    from medloc_core.images import ImageError, load_rgb

    try:
        img = load_rgb(path)
    except ImageError as exc:
        raise ValueError(f"{where}: cannot read image_path {path!r}: {exc}") from exc
    return img.resize(size, Image.BICUBIC) if img.size != size else img


def _processor_bounds(processor: Any) -> tuple[int, int]:
    size = processor.image_processor.size
    get = size.get if isinstance(size, Mapping) else (lambda k, d=None: getattr(size, k, d))
    return int(get("shortest_edge")), int(get("longest_edge"))


def check_frames(rows: Any, processor: Any) -> None:
    """Every row's input frame must be a fixed point of the processor's smart_resize, else the boxes (in that
    frame) would not match what the model sees."""
    from medloc_core.boxes import smart_resize

    min_px, max_px = _processor_bounds(processor)
    for i, r in rows.iterrows():
        h, w = int(r["input_height"]), int(r["input_width"])
        if smart_resize(h, w, min_pixels=min_px, max_pixels=max_px) != (h, w):
            raise ValueError(
                f"record_id={r['record_id']!r} (train row {i}): input frame {w}x{h} was preprocessed with other "
                f"pixel bounds than the processor's (min_pixels={min_px}, max_pixels={max_px}); set "
                "TrainingConfig.min_pixels/max_pixels to the preprocessing values"
            )


def build_examples(rows: Any, answer_style: str) -> list[dict[str, Any]]:
    """Rows -> dicts with ``prompt``, ``image`` (PIL, input frame), ``bbox``, ``dataset``, ``record_id``,
    ``target`` (the SFT completion)."""
    out = []
    for i, r in rows.iterrows():
        where = f"record_id={r['record_id']!r} (train row {i})"
        size = (int(r["input_width"]), int(r["input_height"]))
        bbox = [float(r[c]) for c in ("in_x1", "in_y1", "in_x2", "in_y2")]
        out.append(
            {
                "prompt": prompts.chat_messages(r["prompt_text"]),
                "image": _load_image(str(r["image_path"]), size, where),
                "bbox": bbox,
                "dataset": str(r["dataset"]),
                "record_id": str(r["record_id"]),
                "target": prompts.target_completion(bbox, str(r["label"]), answer_style=answer_style),
            }
        )
    return out


# ------------------------------------------------------------------------------------------- callback


def _gather(values: list) -> list:
    """All ranks' lists concatenated in rank order (identity on one process)."""
    try:
        from accelerate import PartialState

        state = PartialState()
        if state.num_processes <= 1:
            return values
        from accelerate.utils import gather_object

        return list(gather_object(values))
    except (ImportError, RuntimeError):  # accelerate state not initialised: single process
        return values


def _transformers_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class CurriculumCallback(_transformers_callback_base()):  # type: ignore[misc]
    """Feeds each optimizer step's IoUs (all ranks) to the schedule and emits the per-step metrics.

    The τ that scored a step's batch is logged as ``curriculum/threshold`` for that step; ``observe`` may then
    raise τ, which the reward function reads when the next batch is scored (A2).
    """

    def __init__(
        self,
        schedule: Any,
        tracker: Any,
        *,
        num_generations: int,
        metrics_sink: MetricsSink | None,
        history_path: Path | None,
        reward_names: Sequence[str],
    ) -> None:
        self.schedule, self.tracker = schedule, tracker
        self.num_generations = num_generations
        self.metrics_sink = metrics_sink
        self.history_path = history_path
        self.reward_names = list(reward_names)
        self.history: list[dict[str, Any]] = []
        self._pending: dict[int, dict[str, float]] = {}
        self._step_times: list[float] = []
        self._t_last: float | None = None

    # -- timing
    def on_train_begin(self, args, state, control, **kwargs):
        self._t_last = time.perf_counter()

    @property
    def step_seconds(self) -> list[float]:
        return list(self._step_times)

    # -- curriculum
    def _curriculum_metrics(self, record: Any) -> dict[str, float]:
        sched = self.schedule
        per_dataset = hasattr(sched, "threshold_for")
        metrics: dict[str, float] = {}
        tau_before = self._threshold()
        if tau_before is not None:
            metrics["curriculum/threshold"] = tau_before
        per_ds_before = dict(sched.thresholds) if per_dataset else {}
        ious = _gather(list(record.ious))
        datasets = _gather(list(record.datasets))
        failures = sum(_gather([record.parse_failures]))
        completions = sum(_gather([record.completions]))
        raised = False
        if ious:
            if per_dataset:
                raised = bool(sched.observe(ious, datasets=[str(d) for d in datasets]))
            else:
                g = self.num_generations
                groups = [ious[i : i + g] for i in range(0, len(ious), g)] if len(ious) % g == 0 else ious
                raised = bool(sched.observe(groups))
            metrics["train/iou_mean"] = float(sum(ious) / len(ious))
            metrics["train/parse_failure_rate"] = failures / completions if completions else 0.0
        stats = sched.stats
        if per_dataset:
            names = list(sched.schedules)
            for name in names:
                sub = sched.schedules[name].stats
                if per_ds_before.get(name) is not None:
                    metrics[f"curriculum/{name}/threshold"] = float(per_ds_before[name])
                for key, metric in _CURRICULUM_STATS.items():
                    if key in sub:
                        metrics[metric.replace("curriculum/", f"curriculum/{name}/")] = float(sub[key])
            nums = [int(sched.schedules[n].stats.get("num_raises", 0)) for n in names]
            metrics["curriculum/num_raises"] = float(sum(nums))
            # Aggregates over datasets keep the single-schedule keys: means of the window statistics, and a
            # condition counts as met only when it is met for every dataset.
            subs = [sched.schedules[n].stats for n in names]
            for key, metric in _CURRICULUM_STATS.items():
                values = [float(sub[key]) for sub in subs if key in sub]
                if values:
                    agg = min(values) if key.startswith("cond_") else sum(values) / len(values)
                    metrics[metric] = float(agg)
        else:
            for key, metric in _CURRICULUM_STATS.items():
                if key in stats:
                    metrics[metric] = float(stats[key])
            metrics["curriculum/num_raises"] = float(stats.get("num_raises", 0))
            config = getattr(sched, "config", None)
            if tau_before is not None and hasattr(config, "min_hit_rate"):
                # The readiness bars this step's check compared against: P(τ) (min window hit rate) and S(τ)
                # (max window std) at the τ that scored the step.
                metrics["curriculum/required_hit_rate"] = float(config.min_hit_rate(tau_before))
                metrics["curriculum/max_reward_std"] = float(config.max_std(tau_before))
        metrics["curriculum/raised"] = float(raised)
        return metrics

    def _threshold(self) -> float | None:
        sched = self.schedule
        if hasattr(sched, "threshold_for"):
            values = [v for v in sched.thresholds.values() if v is not None]
            return float(sum(values) / len(values)) if values else None
        return None if sched.threshold is None else float(sched.threshold)

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._t_last is not None:
            self._step_times.append(now - self._t_last)
        self._t_last = now
        self.last_record = self.tracker.pop_step()
        metrics = self._curriculum_metrics(self.last_record)
        self._pending[state.global_step] = metrics
        if not control.should_log:  # logging_steps > 1: no TRL log this step; emit the curriculum part now
            self._emit(state, state.global_step, self._pending.pop(state.global_step))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_runtime" in logs or state.global_step not in self._pending:
            return
        metrics = self._pending.pop(state.global_step)
        for key, name in _TRL_KEYS.items():
            if key in logs and isinstance(logs[key], int | float):
                metrics[name] = float(logs[key])
        for key, value in logs.items():
            if key.startswith("rewards/") and key.endswith("/mean"):
                metrics[f"train/{key}"] = float(value)
        self._emit(state, state.global_step, metrics)

    def _emit(self, state, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self.history.append(row)
        if not state.is_world_process_zero:
            return
        if self.history_path is not None:
            with self.history_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        if self.metrics_sink is not None:
            self.metrics_sink(metrics, step)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write_state(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)

    def write_state(self, ckpt: Path, global_step: int) -> None:
        """Write ``curriculum_state.json`` (the last file of a checkpoint) atomically."""
        ckpt.mkdir(parents=True, exist_ok=True)
        payload = {"global_step": global_step, "schedule": self.schedule.state_dict()}
        tmp = ckpt / (CURRICULUM_STATE_NAME + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        tmp.replace(ckpt / CURRICULUM_STATE_NAME)


class CompletionsTableCallback(_transformers_callback_base()):  # type: ignore[misc]
    """Every ``every`` optimizer steps, a sample of the step's completions (text, IoU, dataset) goes to the
    active MLflow run as a table (``completions/step_<N>.json``), next to the curriculum trace. Reads the
    record the :class:`CurriculumCallback` popped for the step, so it must come after it."""

    def __init__(self, curriculum: Any, every: int, sample: int = 16) -> None:
        self.curriculum, self.every, self.sample = curriculum, every, sample

    def on_step_end(self, args, state, control, **kwargs):
        record = getattr(self.curriculum, "last_record", None)
        if (
            not self.every
            or state.global_step % self.every
            or record is None
            or not state.is_world_process_zero
        ):
            return
        import mlflow

        if mlflow.active_run() is None or not record.texts:
            return
        n = min(self.sample, len(record.texts))
        mlflow.log_table(
            {
                "step": [state.global_step] * n,
                "completion": record.texts[:n],
                "iou": record.ious[:n],
                "dataset": [str(d) for d in record.datasets[:n]],
                "threshold": [self.curriculum._threshold()] * n,
            },
            artifact_file=f"completions/step_{state.global_step:05d}.json",
        )


# ------------------------------------------------------------------------------------------- trainer


def _trainer_class():
    from trl import GRPOTrainer

    class MedLocGRPOTrainer(GRPOTrainer):
        """GRPOTrainer with checkpoint handling that really restores Qwen2.5-VL weights and MLAE adapters."""

        medloc_adapter: str = "full"
        medloc_base_model: str | None = None
        medloc_callback: Any = None

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            # Trainer rotates old checkpoints inside _save_checkpoint, before the callbacks' on_save writes the
            # curriculum state, so with save_total_limit a crash right then left only an incomplete checkpoint.
            # Save without rotating, complete the checkpoint, then rotate only if it is loadable.
            from medloc_core import checkpoints

            keep = self.args.save_total_limit
            self.args.save_total_limit = None
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = keep
            if not self.args.should_save:
                return
            run_dir = Path(self._get_output_dir(trial=trial))
            if self.medloc_callback is not None:
                self.medloc_callback.write_state(
                    run_dir / f"checkpoint-{self.state.global_step}", self.state.global_step
                )
            checkpoints.rotate(run_dir, keep)

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            if self.medloc_adapter != "mlae":
                return super()._save(output_dir, state_dict)
            from medloc_core import mlae

            out = Path(output_dir or self.args.output_dir)
            mlae.save_mlae(self.accelerator.unwrap_model(self.model), out, base_model=self.medloc_base_model)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(str(out))

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            model = self.model if model is None else model
            if self.medloc_adapter == "lora":  # peft adapters reload correctly through Trainer
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            if self.medloc_adapter == "mlae":
                from medloc_core import mlae

                mlae.load_mlae(self.accelerator.unwrap_model(model), resume_from_checkpoint)
                return None
            load_full_weights(self.accelerator.unwrap_model(model), resume_from_checkpoint)
            return None

    return MedLocGRPOTrainer


def load_full_weights(model: Any, checkpoint_dir: str | os.PathLike) -> None:
    """Copy a saved full model's weights into ``model`` (strict), converting legacy Qwen2.5-VL key names.

    Trainer's own resume loads the checkpoint with a plain ``load_state_dict`` that does not convert the saved
    (legacy) keys and only warns, keeping the pre-resume weights (transformers#43701); ``from_pretrained``
    converts them.
    """
    import torch

    dtype = next(model.parameters()).dtype
    fresh = type(model).from_pretrained(str(checkpoint_dir), dtype=dtype)
    state = fresh.state_dict()
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(
            f"{checkpoint_dir}: checkpoint weights do not match the model (missing {missing[:5]}, "
            f"unexpected {list(unexpected)[:5]})"
        )
    del fresh


# --------------------------------------------------------------------------------------- session


@dataclass
class TrainingSession:
    """A built but not yet run training: the trainer, the schedule and tracker, and where it resumes from."""

    trainer: Any
    config: TrainingConfig
    output_dir: Path
    model_path: str
    schedule: Any
    tracker: Any
    callback: CurriculumCallback
    processor: Any
    resume_checkpoint: str | None
    sft: dict[str, Any] | None
    medgrpo_stats: dict[str, list[float]] | None

    def run(self) -> TrainingResult:
        """Train (resuming when a checkpoint was found), save ``output_dir/final``, return the result."""
        self.trainer.train(resume_from_checkpoint=self.resume_checkpoint)
        accelerator = self.trainer.accelerator
        main = accelerator.is_main_process
        final = self.output_dir / "final"
        if main:  # one writer: under `accelerate launch` every rank reaches this point
            save_final_model(self)
        accelerator.wait_for_everyone()
        history = read_history(self.output_dir / HISTORY_NAME)
        times = self.callback.step_seconds
        sps = (
            float(sum(times[1:]) / len(times[1:]))
            if len(times) > 1
            else (times[0] if times else float("nan"))
        )
        stats = self.schedule.stats
        if hasattr(self.schedule, "threshold_for"):
            raises = sum(int(s.stats.get("num_raises", 0)) for s in self.schedule.schedules.values())
        else:
            raises = int(stats.get("num_raises", 0))
        result = TrainingResult(
            model_dir=final,
            history=history,
            final_threshold=self.callback._threshold(),
            num_raises=raises,
            steps=int(self.trainer.state.global_step),
            seconds_per_step=sps,
            peak_rss_mb=peak_rss_mb(),
            sft=self.sft,
            medgrpo_stats=self.medgrpo_stats,
            resumed_from=self.resume_checkpoint,
        )
        summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "history"}
        summary["model_dir"] = str(final)
        summary["config"] = self.config.to_dict()
        summary["num_processes"] = accelerator.num_processes
        if main:
            (final / "medloc_training.json").write_text(
                json.dumps(summary, indent=2, default=str) + "\n", "utf-8"
            )
        return result


def read_history(path: Path) -> list[dict[str, Any]]:
    """The per-step rows of ``history.jsonl`` (empty when missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _truncate_history(path: Path, last_step: int) -> None:
    """Drop rows after ``last_step`` (steps redone after a resume would otherwise appear twice)."""
    rows = [r for r in read_history(path) if int(r["step"]) <= last_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def save_final_model(session: TrainingSession) -> Path:
    """Write ``output_dir/final``: the adapter-merged model + processor; adapters also under ``final/adapter``.

    Adapters are merged into a fresh copy of the base model loaded from disk, so the trained (unmerged) model
    held by the trainer is left untouched.
    """
    from medloc_core import modeling

    cfg, trainer = session.config, session.trainer
    final = session.output_dir / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir(parents=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.adapter == "full":
        model.save_pretrained(str(final))
    else:
        if cfg.adapter == "lora":
            model.save_pretrained(str(final / "adapter"))
        else:
            from medloc_core import mlae

            mlae.save_mlae(model, final / "adapter", base_model=session.model_path)
        # Merged into an fp32 copy: the training step's output keeps fp32 weights (registration may cast).
        merged = modeling.load_model(session.model_path, dtype="float32", adapter_dir=final / "adapter")
        merged.save_pretrained(str(final))
        del merged
    session.processor.save_pretrained(str(final))
    return final


def resolve_model_path(config: TrainingConfig) -> str:
    """``tiny``/``tiny-small``/``tiny-grounder`` -> the built offline model folder; anything else unchanged."""
    from medloc_core import modeling

    name = config.model_name_or_path
    if name in TINY_ALIASES:
        kw = {}
        if config.min_pixels is not None:
            kw = {"min_pixels": config.min_pixels, "max_pixels": config.max_pixels}
        return str(modeling.ensure_tiny_model(config.tiny_model_dir, size=TINY_ALIASES[name], seed=0, **kw))
    return str(name)


def weights_dtype(config: TrainingConfig) -> str:
    """The dtype the GRPO policy is loaded in. Mixed precision (``bf16``) keeps fp32 master weights for every
    trainable tensor and runs the compute in bf16 under autocast (Trainer/accelerate ``bf16=True``): AdamW
    updates of ~lr 1e-6 are far below bf16's resolution (8 bits of mantissa), so bf16 weights would barely move.
    Only a frozen base under a LoRA/MLAE adapter is stored in bf16; the adapter's own tensors stay fp32.
    """
    return "bfloat16" if config.bf16 and config.adapter != "full" else "float32"


def _make_schedule(config: TrainingConfig, datasets: Sequence[str]) -> Any:
    from medloc_core.curriculum import PerDatasetSchedule, make_schedule

    def one():
        if config.schedule == "medloc":
            return make_schedule("medloc", config.curriculum_config())
        if config.schedule == "fixed":
            return make_schedule("fixed", tau=config.fixed_tau)
        return make_schedule(config.schedule, total_steps=config.max_steps)

    if config.per_dataset_thresholds:
        if config.schedule == "raw_iou":
            raise ValueError("per_dataset_thresholds needs a thresholded schedule, not 'raw_iou'")
        return PerDatasetSchedule(one, sorted(set(datasets)))
    return one()


def generate_completions(
    model: Any,
    processor: Any,
    examples: Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int,
    temperature: float | None,
    batch_size: int = 8,
) -> list[str]:
    """One completion per example (``prompt`` messages + ``image``): sampled at ``temperature`` (MedGRPO's
    statistics), or greedy with ``temperature=None`` (the SFT early-stop check)."""
    import torch

    device = next(model.parameters()).device
    out: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            texts = [
                processor.apply_chat_template(e["prompt"], add_generation_prompt=True, tokenize=False)
                for e in chunk
            ]
            enc = processor(
                text=texts, images=[[e["image"]] for e in chunk], padding=True, return_tensors="pt"
            )
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.no_grad():
                sampling = (
                    {"do_sample": False}
                    if temperature is None
                    else {"do_sample": True, "temperature": temperature}
                )
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, **sampling)
            out += processor.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return out


def fit_medgrpo(
    model: Any,
    processor: Any,
    examples: Sequence[Mapping[str, Any]],
    base_reward: Callable,
    config: TrainingConfig,
) -> dict[str, list[float]]:
    """Quartiles of ``base_reward`` per dataset over completions of the starting model (MedGRPO, §4)."""
    import random

    from medloc_core.rewards import fit_medgrpo_stats

    rng = random.Random(config.seed)
    by_ds: dict[str, list[Mapping[str, Any]]] = {}
    for e in examples:
        by_ds.setdefault(e["dataset"], []).append(e)
    picked = []
    for _, items in sorted(by_ds.items()):
        picked += rng.sample(items, min(len(items), config.medgrpo_fit_samples))
    texts = generate_completions(
        model, processor, picked, max_new_tokens=config.max_completion_length, temperature=config.temperature
    )
    values = base_reward(
        prompts=[e["prompt"] for e in picked],
        completions=[[{"role": "assistant", "content": t}] for t in texts],
        bbox=[e["bbox"] for e in picked],
        dataset=[e["dataset"] for e in picked],
    )
    grouped: dict[str, list[float]] = {}
    for e, v in zip(picked, values):
        grouped.setdefault(e["dataset"], []).append(float(v))
    return {k: list(v) for k, v in fit_medgrpo_stats(grouped).items()}


SMALL_MODEL_PARAMS = 50_000_000


def configure_threads(config: TrainingConfig, model: Any) -> int:
    """Apply ``config.torch_threads`` (see :class:`TrainingConfig`); returns the thread count in effect."""
    import torch

    threads = config.torch_threads
    on_cpu = config.use_cpu or not torch.cuda.is_available()
    if threads is None and on_cpu and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def latest_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest checkpoint that can really be resumed from (``checkpoints.latest_loadable_checkpoint``):
    damaged or cut-off newer ones are set aside with a warning."""
    from medloc_core.checkpoints import latest_loadable_checkpoint

    return latest_loadable_checkpoint(output_dir)


def sft_stop_iou(config: TrainingConfig) -> float:
    """The IoU of the SFT early-stop check: ``sft_stop_iou``, else where the schedule starts."""
    if config.sft_stop_iou is not None:
        return config.sft_stop_iou
    if config.schedule == "medloc":
        return config.curriculum_config().tau0
    return config.fixed_tau if config.schedule == "fixed" else 0.5


def greedy_hit_rate(
    model: Any, processor: Any, examples: Sequence[Mapping[str, Any]], *, iou: float, max_new_tokens: int
) -> float:
    """Share of ``examples`` whose greedy answer parses to a box with IoU >= ``iou`` (input-frame pixels)."""
    from medloc_core.boxes import iou as box_iou
    from medloc_core.boxes import parse_box

    texts = generate_completions(model, processor, examples, max_new_tokens=max_new_tokens, temperature=None)
    hits = 0
    for e, text in zip(examples, texts):
        box = parse_box(text)
        hits += int(box is not None and box_iou(tuple(box), tuple(e["bbox"])) >= iou)
    return hits / len(examples) if examples else 0.0


def sft_val_examples(prepared_df: Any, config: TrainingConfig, processor: Any) -> list[dict] | None:
    """The ``val`` split as examples for the SFT early-stop check (None when it is off or there is no val)."""
    if config.sft_stop_hit_rate is None or not (prepared_df["split"] == "val").any():
        return None
    rows = train_rows(prepared_df, "val")
    check_frames(rows, processor)
    return build_examples(rows, config.answer_style)


def run_sft_warmup(
    config: TrainingConfig,
    model_path: str,
    processor: Any,
    examples: list[dict],
    output_dir: Path,
    val_examples: list[dict] | None = None,
):
    """SFT warm-up into ``output_dir/sft`` (skipped when a finished one is there). Returns (path, summary)."""
    from medloc_core import modeling, sft

    sft_dir = output_dir / "sft"
    done = sft_dir / SFT_DONE_NAME
    stop = config.sft_stop_hit_rate if val_examples else None
    if config.sft_stop_hit_rate is not None and not val_examples:
        logger.warning(
            "sft_stop_hit_rate is set but there is no 'val' split: the SFT warm-up runs all its steps"
        )
    if done.is_file():
        summary = json.loads(done.read_text(encoding="utf-8"))
        wanted = {
            "max_steps": config.sft_warmup_steps,
            "base_model": model_path,
            "lr_schedule": config.sft_lr_scheduler_type,
            "batch_size": config.sft_batch_size,
            "stop_hit_rate": stop,
        }
        if all(summary.get(k) == v for k, v in wanted.items()):
            logger.info("reusing finished SFT warm-up in %s", sft_dir)
            return str(sft_dir), summary
    import torch

    torch.manual_seed(config.seed)
    model = modeling.load_model(model_path, dtype="float32")  # fp32 master weights; bf16 only in autocast
    if not config.use_cpu and torch.cuda.is_available():
        model.to("cuda")
    configure_threads(config, model)
    lr = config.sft_learning_rate
    if lr is None:
        lr = 3e-3 if config.is_tiny else 1e-5
    sft_examples = [sft.SFTExample(e["prompt"], e["image"], e["target"]) for e in examples]
    stop_iou = sft_stop_iou(config)

    def val_hit_rate(step: int, policy: Any = model) -> float:
        return greedy_hit_rate(
            policy, processor, val_examples, iou=stop_iou, max_new_tokens=config.max_completion_length
        )

    res = sft.sft_warmup(
        model,
        processor,
        sft_examples,
        steps=config.sft_warmup_steps,
        learning_rate=lr,
        batch_size=config.sft_batch_size,
        seed=config.seed,
        progress=config.progress,
        bf16=config.bf16,
        lr_schedule=config.sft_lr_scheduler_type,
        stop_when=val_hit_rate if stop is not None else None,
        check_every=config.sft_check_every,
        stop_at=stop if stop is not None else 1.0,
    )
    if sft_dir.exists():
        shutil.rmtree(sft_dir)
    model.save_pretrained(str(sft_dir))
    processor.save_pretrained(str(sft_dir))
    summary = {
        "steps": res.steps,
        "max_steps": config.sft_warmup_steps,
        "stop_hit_rate": stop,
        "stop_iou": stop_iou if stop is not None else None,
        "stopped_early": res.stopped_early,
        "val_checks": [list(c) for c in res.checks],
        "learning_rate": lr,
        "first_loss": res.first_loss,
        "last_loss": res.last_loss,
        "seconds": res.seconds,
        "base_model": model_path,
        "lr_schedule": config.sft_lr_scheduler_type,
        "batch_size": config.sft_batch_size,
        "losses": [round(v, 4) for v in res.losses],
    }
    done.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    del model
    return str(sft_dir), summary


def _mlflow_run_active() -> bool:
    """An MLflow run this process started or entered. Not under ``accelerate launch`` (``MLFLOW_RUN_ID`` set):
    transformers' MLflow callback would try to start that already active run again and fail."""
    import mlflow

    return mlflow.active_run() is not None and not os.environ.get("MLFLOW_RUN_ID")


# GRPOConfig fields the pipeline owns: a `trl:` block may not set them.
_OWNED_TRL_FIELDS = frozenset(
    {"output_dir", "reward_weights", "report_to", "remove_unused_columns", "save_strategy", "disable_tqdm"}
)


def trl_field_names() -> frozenset[str]:
    """Every field of TRL's ``GRPOConfig`` (the options a ``trl:`` block may set)."""
    from trl import GRPOConfig

    return frozenset(f.name for f in dataclasses.fields(GRPOConfig))


def build_grpo_config(config: TrainingConfig, output_dir: Path, reward_weights: list[float]):
    """The TRL ``GRPOConfig`` for ``config``, with no hand-copied field list: every ``TrainingConfig`` field
    whose name is also a ``GRPOConfig`` field passes through by name, then the ``trl`` block (any other
    ``GRPOConfig`` option, as TRL names it) is applied on top, so a new TRL option takes one line of YAML.
    Metrics go through the metrics sink; with an active MLflow run, TRL also reports to it."""
    from trl import GRPOConfig

    if config.use_vllm and importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "TrainingConfig.use_vllm=True but vLLM is not installed here; install vllm or set it false"
        )
    names = trl_field_names()
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in names}
    shared.update(
        # save_steps 0 means "no checkpoints" here; TRL wants a strategy and a positive interval
        save_strategy="steps" if config.save_steps > 0 else "no",
        save_steps=config.save_steps if config.save_steps > 0 else 500,
        data_seed=config.seed,
        dataloader_num_workers=0,
    )
    return GRPOConfig(
        **shared,
        **dict(config.trl),
        output_dir=str(output_dir),
        reward_weights=reward_weights,
        # TRL's own MLflow integration logs all its metrics into the pipeline's run when one is active.
        report_to=["mlflow"] if _mlflow_run_active() else [],
        remove_unused_columns=False,
        disable_tqdm=not config.progress,
    )


def prepare_training(
    prepared_df: Any,
    config: TrainingConfig,
    output_dir: str | os.PathLike,
    *,
    metrics_sink: MetricsSink | None = None,
    resume: bool = True,
    callbacks: Sequence[Any] = (),
) -> TrainingSession:
    """Build everything :func:`train` runs (SFT warm-up included), without starting GRPO."""
    import torch
    from datasets import Dataset

    from medloc_core import modeling, rewards

    if isinstance(config, Mapping):
        config = TrainingConfig.from_dict(config)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sink = default_metrics_sink if metrics_sink is None else metrics_sink
    rows = train_rows(prepared_df)

    base_path = resolve_model_path(config)
    processor = modeling.load_processor(base_path)
    if config.min_pixels is not None:
        processor.image_processor.size = {
            "shortest_edge": config.min_pixels,
            "longest_edge": config.max_pixels,
        }
    check_frames(rows, processor)
    examples = build_examples(rows, config.answer_style)

    # Under `accelerate launch` every rank runs this; file-writing work happens on the main process first and
    # the other ranks then reuse its results (SFT folder, MedGRPO statistics).
    from accelerate import PartialState

    # cpu=True mirrors TrainingArguments(use_cpu=True): under torchrun it makes the gloo process group.
    proc_state = PartialState(cpu=config.use_cpu)
    resume_ckpt = latest_complete_checkpoint(out) if resume else None
    if resume_ckpt is None and proc_state.is_main_process:  # fresh start: drop a previous run's leftovers
        for child in list(out.glob("checkpoint-*")) + [out / HISTORY_NAME, out / MEDGRPO_STATS_NAME]:
            shutil.rmtree(child) if child.is_dir() else child.unlink(missing_ok=True)
    proc_state.wait_for_everyone()

    sft_summary = None
    model_path = base_path
    if config.sft_warmup_steps > 0:
        val_examples = sft_val_examples(prepared_df, config, processor)
        with proc_state.main_process_first():
            model_path, sft_summary = run_sft_warmup(
                config, base_path, processor, examples, out, val_examples
            )

    torch.manual_seed(config.seed)
    model = modeling.load_model(model_path, dtype=weights_dtype(config))
    model.train()
    configure_threads(config, model)

    schedule = _make_schedule(config, [e["dataset"] for e in examples])
    tracker = rewards.RewardTracker()
    accuracy = rewards.make_reward_for_schedule(schedule, tracker, parser=config.reward_parser)
    medgrpo_stats = None
    if config.medgrpo_normalization:
        stats_path = out / MEDGRPO_STATS_NAME
        with proc_state.main_process_first():
            if stats_path.is_file():  # fitted by the main rank just now, or by the run being resumed
                medgrpo_stats = json.loads(stats_path.read_text(encoding="utf-8"))
            else:
                fit_reward = rewards.make_reward_for_schedule(schedule, None, parser=config.reward_parser)
                medgrpo_stats = fit_medgrpo(model, processor, examples, fit_reward, config)
                stats_path.write_text(json.dumps(medgrpo_stats, indent=2) + "\n", encoding="utf-8")
        accuracy = rewards.make_medgrpo_normalized_reward(
            accuracy, {k: tuple(v) for k, v in medgrpo_stats.items()}, k=config.medgrpo_k
        )
    accuracy_weight, format_weight = rewards.reward_weights(
        config.resolved_reward_mix, config.accuracy_weight, config.format_weight
    )
    reward_funcs, weights = [accuracy], [accuracy_weight]
    if config.format_reward:
        require_think = (
            config.answer_style == "think"
            if config.format_require_think is None
            else config.format_require_think
        )
        reward_funcs.append(
            rewards.make_format_reward(
                require_think=require_think,
                partial_credit=config.format_partial_credit,
                parser=config.reward_parser,
            )
        )
        weights.append(format_weight)

    peft_config = None
    if config.adapter == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules_arg,
            task_type="CAUSAL_LM",
        )
    elif config.adapter == "mlae":
        from medloc_core import mlae

        mlae.apply_mlae(
            model,
            config.target_modules_arg,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            drop_rate=config.mlae_drop_rate,
            dropout=config.lora_dropout,
        )
        if config.gradient_checkpointing:
            model.enable_input_require_grads()

    history_path = out / HISTORY_NAME
    if resume_ckpt is not None:
        state_file = Path(resume_ckpt) / CURRICULUM_STATE_NAME
        if not state_file.is_file():
            raise ValueError(
                f"{resume_ckpt}: no {CURRICULUM_STATE_NAME}; cannot resume the curriculum exactly"
            )
        payload = json.loads(state_file.read_text(encoding="utf-8"))
        schedule.load_state_dict(payload["schedule"])
        if proc_state.is_main_process:
            _truncate_history(history_path, int(payload["global_step"]))
        logger.info(
            "resuming from %s (step %s, threshold %s)", resume_ckpt, payload["global_step"], schedule.stats
        )

    dataset = Dataset.from_list(
        [{k: e[k] for k in ("prompt", "image", "bbox", "dataset", "record_id")} for e in examples]
    )
    callback = CurriculumCallback(
        schedule,
        tracker,
        num_generations=config.num_generations,
        metrics_sink=sink,
        history_path=history_path,
        reward_names=[f.__name__ for f in reward_funcs],
    )
    trainer_cls = _trainer_class()
    trainer = trainer_cls(
        model=model,
        reward_funcs=reward_funcs,
        args=build_grpo_config(config, out, weights),
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[callback, CompletionsTableCallback(callback, config.log_completions_every), *callbacks],
    )
    if not config.progress:  # disable_tqdm makes Trainer print every log dict instead
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    trainer.medloc_adapter = config.adapter
    trainer.medloc_base_model = model_path
    trainer.medloc_callback = callback
    return TrainingSession(
        trainer=trainer,
        config=config,
        output_dir=out,
        model_path=model_path,
        schedule=schedule,
        tracker=tracker,
        callback=callback,
        processor=processor,
        resume_checkpoint=resume_ckpt,
        sft=sft_summary,
        medgrpo_stats=medgrpo_stats,
    )


def train(
    prepared_df: Any,
    config: TrainingConfig | Mapping[str, Any],
    output_dir: str | os.PathLike,
    *,
    metrics_sink: MetricsSink | None = None,
    resume: bool = True,
    callbacks: Sequence[Any] = (),
) -> TrainingResult:
    """Run GRPO (after the optional SFT warm-up) on the train split of ``prepared_df``; see the module doc.

    ``metrics_sink(metrics, step)`` receives each optimizer step's metrics (default: the active MLflow run, if
    any). ``resume`` continues from the last ``output_dir/checkpoint-*``; ``resume=False`` starts over.
    ``callbacks`` are extra ``TrainerCallback`` objects.
    """
    session = prepare_training(
        prepared_df, config, output_dir, metrics_sink=metrics_sink, resume=resume, callbacks=callbacks
    )
    return session.run()
