"""The training configuration: one typed model, :class:`TrainingConfig`, parsed once from the run config's
``training:`` block and handed as is to the trainer (and, as its JSON dump, to ``accelerate launch`` children);
the file names of a run folder; the model-path and dtype rules derived from it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medloc_core import masking
from medloc_core.boxes import PARSERS
from medloc_core.curriculum import SCHEDULE_NAMES
from medloc_core.curriculum.config import CurriculumConfig
from medloc_core.curriculum.spread import SpreadConfig
from medloc_core.model.adapters import ADAPTERS
from medloc_core.model.standin import ensure_tiny_model
from medloc_core.prompts import ANSWER_STYLES
from medloc_core.rewards.grounding import REWARD_MIXES
from medloc_core.training.sft import LR_SCHEDULES

logger = logging.getLogger(__name__)


TINY_ALIASES = {"tiny": "tiny", "tiny-small": "small", "tiny-grounder": "grounder"}

HISTORY_NAME = "history.jsonl"

SFT_DONE_NAME = "medloc_sft.json"

MEDGRPO_STATS_NAME = "medgrpo_stats.json"


class AccelerateConfig(BaseModel):
    """``training.accelerate:`` block: ``accelerate launch`` options for multi-GPU training (None: train in the
    step's own process)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_processes: int = Field(default=1, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16", "fp8"] | None = None
    main_process_port: int | None = Field(default=None, ge=1, le=65535)
    num_machines: int | None = Field(default=None, ge=1)
    cpu: bool = False
    extra_args: list[str] = Field(default_factory=list)


class TrainingConfig(BaseModel):
    """Everything that shapes a GRPO run. Learning rates are per optimizer step; lengths are in tokens.

    Model: ``model_name_or_path`` is a Hub id or folder (GPU default ``Qwen/Qwen2.5-VL-3B-Instruct``), or
    ``"tiny"`` / ``"tiny-small"`` / ``"tiny-grounder"`` (the CPU stand-in that learns to localize, see
    ``loading.TINY_SIZES``) to build the offline model once under ``tiny_model_dir``.
    ``min_pixels``/``max_pixels`` (optional) set the processor's resize bounds; they must agree with the frame
    the data was preprocessed for (checked per row).

    Reward: ``schedule`` is ``medloc`` (curriculum: ``curriculum`` is its :class:`CurriculumConfig`, None for the
    defaults), ``medloc_spread`` (docs/curriculum.md; ``spread`` is its :class:`SpreadConfig`, None for the
    defaults), ``fixed`` (τ = ``fixed_tau``), ``raw_iou`` or ``vtriune``. ``per_dataset_thresholds`` runs one schedule per
    dataset. ``medgrpo_normalization`` passes the accuracy reward through MedGRPO's per-dataset logistic, with
    quartiles fitted on completions of the starting (SFT or base) model on up to ``medgrpo_fit_samples``
    train rows before GRPO, and kept fixed (docs/method.md §6). The quartiles are of the accuracy reward itself
    (IoU for ``raw_iou``; 0/1 hits at τ0 for thresholded schedules, where the logistic is close to a step and
    the fitted quartiles go stale as τ rises: use it with ``raw_iou`` or ``vtriune``). With per-dataset
    thresholds each dataset's IoUs of a step form one window entry of its schedule. The format reward (VLM-R1) is added when
    ``format_reward``; it requires ``<think>`` when ``answer_style == "think"`` unless ``format_require_think``
    says otherwise. ``reward_parser`` says how rewards read a completion: ``vlmr1`` (default: VLM-R1's REC
    regexes, integers only, first closed answer block) or ``lenient`` (``boxes.parse_box``'s evaluation
    parser). ``reward_mix``: ``sum`` (TRL's weighted sum with ``accuracy_weight``/``format_weight``; VLM-R1's
    plain sum with the default weights 1) or ``vtriune`` ((1·accuracy + 0.1·format) / 1.1, V-Triune's code);
    None picks ``vtriune`` for the ``vtriune`` schedule and ``sum`` otherwise.

    Dynamic sampling (docs/curriculum.md §4): with ``dynamic_sampling`` the trainer scores up to
    ``dynamic_sampling_draws`` draws of prompts per step (the dataloader's, then random train rows) and fills the
    batch with groups whose rewards spread; when too few do, the rest of the batch is the first draw's dead
    groups with their completion mask zeroed (they never reach the loss). The curriculum sees the first draw.

    Sampling: ``temperature``, ``top_p`` and ``top_k`` (0 = off) for the rollouts. ``use_bias_correction_kl``
    (TRL's option, off here as in VLM-R1: the plain k3 KL term) multiplies the KL term by the importance ratio.

    TRL: a field named like a ``GRPOConfig`` field passes to TRL unchanged; ``trl`` holds any other
    ``GRPOConfig`` option under TRL's own name (e.g. ``{epsilon_high: 0.28, mask_truncated_completions: true}``).

    GRPO: ``num_generations`` completions per prompt; ``per_device_train_batch_size`` counts completions
    (a multiple of ``num_generations``). ``beta`` is the KL weight: 0.04 (VLM-R1) by default, the digest's 0.4
    is ambiguity A7 in docs/method.md. ``loss_type`` "grpo" (VLM-R1's per-sequence normalisation; TRL also has dapo, dr_grpo,
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
    min_pixels: int | None = Field(default=None, gt=0)
    max_pixels: int | None = Field(default=None, gt=0)
    schedule: str = "medloc"
    curriculum: CurriculumConfig | None = None
    spread: SpreadConfig | None = None
    fixed_tau: float = Field(default=0.5, ge=0, le=1)
    per_dataset_thresholds: bool = False
    medgrpo_normalization: bool = False
    medgrpo_k: float = 3.0
    medgrpo_fit_samples: int = Field(default=64, ge=1)
    num_generations: int = Field(default=4, ge=2)
    dynamic_sampling: bool = False
    dynamic_sampling_draws: int = Field(default=3, ge=2)
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_steps: int = Field(default=60, ge=1)
    learning_rate: float = Field(default=3e-4, gt=0)
    lr_scheduler_type: str = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = Field(default=0.04, ge=0)
    epsilon: float = 0.2
    num_iterations: int = 1
    temperature: float = Field(default=0.9, gt=0)
    top_p: float = 1.0
    top_k: int = Field(default=0, ge=0)
    use_bias_correction_kl: bool = False
    max_completion_length: int = Field(default=48, ge=1)
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    adapter: str = "full"
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: list | str = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    mlae_drop_rate: float = Field(default=0.1, ge=0, lt=1)
    sft_warmup_steps: int = Field(default=0, ge=0)
    sft_learning_rate: float | None = None
    sft_batch_size: int = 8
    sft_lr_scheduler_type: str = "constant"
    sft_stop_hit_rate: float | None = Field(default=None, gt=0, le=1)
    sft_stop_iou: float | None = Field(default=None, ge=0, le=1)
    sft_check_every: int = Field(default=50, ge=1)
    bf16: bool = False
    gradient_checkpointing: bool = False
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    use_cpu: bool = False
    seed: int = 0
    save_steps: int = Field(default=50, ge=0)
    save_total_limit: int | None = 3
    logging_steps: int = Field(default=1, ge=1)
    log_completions_every: int = Field(default=50, ge=0)
    trl: dict = Field(default_factory=dict)
    answer_style: str = "think"
    format_reward: bool = True
    format_require_think: bool | None = None
    format_partial_credit: bool = False
    format_weight: float = 1.0
    accuracy_weight: float = 1.0
    reward_parser: str = "vlmr1"
    reward_mix: str | None = None
    progress: bool = True
    torch_threads: int | None = Field(default=None, ge=1)

    accelerate: AccelerateConfig | None = None

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: How many times a TrainingConfig was validated in this process (a test proves the run parses it once).
    validations: ClassVar[int] = 0

    @model_validator(mode="after")
    def _cross_field_rules(self) -> TrainingConfig:
        TrainingConfig.validations += 1

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name}: {why} (got {getattr(self, name)!r})")

        for name, allowed in (
            ("schedule", SCHEDULE_NAMES),
            ("adapter", ADAPTERS),
            ("answer_style", ANSWER_STYLES),
        ):
            if getattr(self, name) not in allowed:
                raise bad(name, f"must be one of {allowed}")
        if self.per_device_train_batch_size % self.num_generations:
            raise bad(
                "per_device_train_batch_size", f"must be a multiple of num_generations={self.num_generations}"
            )
        if self.trl:
            mine = set(type(self).model_fields) & trl_field_names()
            for key in self.trl:
                if key in _OWNED_TRL_FIELDS or key in mine:
                    raise bad(
                        "trl", f"{key!r} is set by the pipeline or by training.{key}, not in the trl block"
                    )
                if key not in trl_field_names():
                    raise bad("trl", f"{key!r} is not a TRL GRPOConfig option")
        if self.reward_parser not in PARSERS:
            raise bad("reward_parser", f"must be one of {PARSERS}")
        if self.reward_mix is not None and self.reward_mix not in REWARD_MIXES:
            raise bad("reward_mix", f"must be one of {REWARD_MIXES} (or null: by schedule)")
        tm = self.target_modules
        if not (isinstance(tm, str) and tm) and not (
            isinstance(tm, list) and tm and all(isinstance(t, str) and t for t in tm)
        ):
            raise bad("target_modules", "must be a non-empty list of module names or one regex string")
        if (self.min_pixels is None) != (self.max_pixels is None):
            raise bad("min_pixels", "set min_pixels and max_pixels together")
        if self.min_pixels is not None and self.min_pixels > self.max_pixels:
            raise bad("max_pixels", "need min_pixels <= max_pixels")
        # An empty block (or its full dump: every default) is no block, for any schedule.
        if self.schedule != "medloc" and self.curriculum not in (None, CurriculumConfig()):
            raise ValueError(
                f"curriculum: only applies to schedule 'medloc', not {self.schedule!r}; remove it"
            )
        if self.schedule != "medloc_spread" and self.spread not in (None, SpreadConfig()):
            raise ValueError(
                f"spread: only applies to schedule 'medloc_spread', not {self.schedule!r}; remove it"
            )
        if self.sft_lr_scheduler_type not in LR_SCHEDULES:
            raise bad("sft_lr_scheduler_type", f"must be one of {LR_SCHEDULES}")
        return self

    @property
    def curriculum_settings(self) -> CurriculumConfig:
        """The curriculum this run uses: ``curriculum``, or the defaults when the block is left out."""
        return self.curriculum if self.curriculum is not None else CurriculumConfig()

    @property
    def spread_settings(self) -> SpreadConfig:
        """``medloc_spread``'s settings: ``spread``, or the defaults when the block is left out."""
        return self.spread if self.spread is not None else SpreadConfig()

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
    def require_think(self) -> bool:
        """Whether the format reward requires ``<think>``: ``format_require_think``, else the answer style's."""
        if self.format_require_think is not None:
            return self.format_require_think
        return self.answer_style == "think"

    @property
    def is_tiny(self) -> bool:
        name = str(self.model_name_or_path)
        return name in TINY_ALIASES or any(f"qwen25vl-{size}-" in name for size in TINY_ALIASES.values())


def resolve_model_path(config: TrainingConfig) -> str:
    """``tiny``/``tiny-small``/``tiny-grounder`` -> the built offline model folder; anything else unchanged."""

    name = config.model_name_or_path
    if name in TINY_ALIASES:
        kw = {}
        if config.min_pixels is not None:
            kw = {"min_pixels": config.min_pixels, "max_pixels": config.max_pixels}
        # The stand-in's initial weights follow the run's seed, like its data order and sampling.
        return str(ensure_tiny_model(config.tiny_model_dir, size=TINY_ALIASES[name], seed=config.seed, **kw))
    return str(masking.reveal(name))  # a ${secret:NAME} placeholder gets its value only here


def weights_dtype(config: TrainingConfig) -> str:
    """The dtype the GRPO policy is loaded in. Mixed precision (``bf16``) keeps fp32 master weights for every
    trainable tensor and runs the compute in bf16 under autocast (Trainer/accelerate ``bf16=True``): AdamW
    updates of ~lr 1e-6 are far below bf16's resolution (8 bits of mantissa), so bf16 weights would barely move.
    Only a frozen base under a LoRA/MLAE adapter is stored in bf16; the adapter's own tensors stay fp32.
    """
    return "bfloat16" if config.bf16 and config.adapter != "full" else "float32"


# GRPOConfig fields the pipeline owns: a `trl:` block may not set them.
_OWNED_TRL_FIELDS = frozenset(
    {"output_dir", "reward_weights", "report_to", "remove_unused_columns", "save_strategy", "disable_tqdm"}
)


def trl_field_names() -> frozenset[str]:
    """Every field of TRL's ``GRPOConfig`` (the options a ``trl:`` block may set)."""
    from trl import GRPOConfig

    return frozenset(f.name for f in dataclasses.fields(GRPOConfig))
