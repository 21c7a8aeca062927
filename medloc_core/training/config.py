"""The training configuration: ``TrainingConfig`` (validated once), the file names of a run folder, and
the model-path and dtype rules derived from it.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medloc_core import masking, prompts
from medloc_core.curriculum import SCHEDULE_NAMES

logger = logging.getLogger(__name__)


SCHEDULES = SCHEDULE_NAMES  # one list: medloc_core.curriculum


ADAPTERS = ("full", "lora", "mlae")


TINY_ALIASES = {"tiny": "tiny", "tiny-small": "small", "tiny-grounder": "grounder"}


HISTORY_NAME = "history.jsonl"


SFT_DONE_NAME = "medloc_sft.json"


MEDGRPO_STATS_NAME = "medgrpo_stats.json"


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


def resolve_model_path(config: TrainingConfig) -> str:
    """``tiny``/``tiny-small``/``tiny-grounder`` -> the built offline model folder; anything else unchanged."""
    from medloc_core import modeling

    name = config.model_name_or_path
    if name in TINY_ALIASES:
        kw = {}
        if config.min_pixels is not None:
            kw = {"min_pixels": config.min_pixels, "max_pixels": config.max_pixels}
        # The stand-in's initial weights follow the run's seed, like its data order and sampling.
        return str(
            modeling.ensure_tiny_model(config.tiny_model_dir, size=TINY_ALIASES[name], seed=config.seed, **kw)
        )
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
