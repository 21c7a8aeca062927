"""The ``medloc`` command: one module of this package per command group.

Each module registers its own subparser through a ``register(subparsers)`` function, so this file stays a table
of contents. Heavy imports happen inside the command handlers, keeping ``--help`` fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Sequence

from medloc_core import environment

# (module, what it adds). Each module exposes ``register(subparsers) -> None``; a handler is stored with
# ``parser.set_defaults(func=callable(args) -> int)``.
COMMAND_MODULES = (
    "medloc_core.cli.data",  # medloc data synth|ingest|preprocess
    "medloc_core.cli.train",  # medloc build-tiny-model, medloc train
    "medloc_core.cli.registry",  # medloc evaluate, predict, promote
    "medloc_core.cli.run",  # medloc run (the pipeline), medloc schedule
    "medloc_core.cli.tools",  # medloc env, ui, serve: the tools' own commands on the project's stores
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medloc",
        description=(
            "MedLoc: train vision-language models to localize findings in medical images with GRPO and a "
            "performance-aware IoU curriculum (MedLoc-R1). Boxes are (x1, y1, x2, y2) pixels."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # an area not installed in this build
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


def entry() -> int:
    """The ``medloc`` command: :func:`main` in the project environment (``medloc_core/environment.py``), so every
    command, the cron line's included, finds the same ZenML and MLflow stores whatever the working directory."""
    try:
        root = environment.project_root()
    except FileNotFoundError:  # installed outside a checkout: the working directory's .medloc, as before
        root = None
    if root is not None:
        environment.apply(environment.project_environment(root))
    return main()
