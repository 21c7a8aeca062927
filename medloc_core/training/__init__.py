"""GRPO training of a Qwen2.5-VL grounder with TRL and the MedLoc-R1 IoU curriculum.

Wiring (``train``):

1. The ``split == "train"`` rows of a prepared DataFrame become a TRL dataset: ``prompt`` (chat messages from
   ``prompts.chat_messages``), ``image`` (PIL, resized to the row's model-input frame), ``bbox``
   (``[in_x1, in_y1, in_x2, in_y2]``, model-input-frame pixels, xyxy), ``dataset``, ``record_id``.
2. Optional SFT warm-up (``medloc_core.training.sft``) writes ``output_dir/sft``; GRPO then starts from it (and, with
   ``beta > 0``, uses it as the reference policy, as VLM-R1 does when RL starts from an SFT checkpoint).
3. ``GRPOTrainer`` gets the format reward and the accuracy reward of the chosen schedule
   (``medloc_core.rewards.grounding``). The reward reads τ from the schedule when a batch is scored; a
   :class:`CurriculumCallback` pops the :class:`~medloc_core.rewards.tracker.RewardTracker` after every optimizer step,
   gathers the IoUs of all ranks (docs/method.md §3 A13), feeds them to ``schedule.observe`` and so a raise applies
   from the next batch on (A2). It emits one metrics dict per step to ``metrics_sink`` and
   ``output_dir/history.jsonl``.
4. Checkpoints (``save_steps``) hold the trainer state plus ``curriculum_state.json``; ``resume=True`` continues
   from the last one with τ, the window, the raise count, the step and the weights restored. Full fine-tuning
   works around transformers#43701 (Trainer's resume skips Qwen2.5-VL's key conversion and silently keeps the
   old weights) by loading the checkpoint through ``from_pretrained``; MLAE checkpoints store only MLAE tensors.
5. ``output_dir/final`` holds a plain (adapter-merged) model and the processor, loadable with
   ``model.loading.load_model`` + ``model.loading.load_processor``; LoRA/MLAE adapters are also kept in
   ``final/adapter``.

KL β defaults to 0.04 (VLM-R1's value); the MedLoc-R1 digest says 0.4 (ambiguity A7 in docs/method.md §3).

Modules, in reading order: ``session`` (the table of builders), ``config``, ``rows``, ``warmup`` (SFT warm-up,
MedGRPO fit), ``sft``, ``trainer``, ``callbacks``, ``checkpoints``, ``launch``; the
``accelerate launch`` entry is ``medloc_core.cli.train`` (``medloc train``).
"""
