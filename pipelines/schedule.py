"""The pipeline's schedule on orchestrators that have one (Kubernetes: a ``batch/v1`` CronJob).

``medloc_training.with_options(config_path=..., schedule=build_schedule("0 3 * * 1"))()``, or a run config with a
``schedule:`` block (``configs/medloc_training_k8s.yaml``), which ``zenml pipeline run -c`` reads itself. The cron
rules are the library's (``medloc_core.cron``); this module only builds ZenML's object.
"""

from __future__ import annotations

import os

from zenml.config.schedule import Schedule

from medloc_core.cron import load_run_config, schedule_block, validate_cron


def build_schedule(cron_expression: str, *, name: str | None = None) -> Schedule:
    """A ZenML cron ``Schedule`` (the expression validated first; ValueError names the bad field)."""
    return Schedule(name=name, cron_expression=validate_cron(cron_expression))


def schedule_from_config(path: str | os.PathLike[str]) -> Schedule | None:
    """The ZenML ``Schedule`` of the config file's ``schedule:`` block, or None without one."""
    block = schedule_block(load_run_config(path), source=str(path))
    return None if block is None else Schedule(**block)
