"""Rewards with TRL's signature: the grounding rewards (accuracy under a schedule, format), the per-step record they
fill for the curriculum, and MedGRPO's per-dataset normalisation (``docs/method.md`` §0, §5, §6)."""
