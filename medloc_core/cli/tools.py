"""``medloc env``, ``medloc ui`` and ``medloc serve``: the project's stores for the tools' own commands.

Each tool would otherwise look for its state somewhere of its own (MLflow: ``./mlruns`` or an ``mlflow.db`` in
the working directory; ZenML: the user's global store) and ``mlflow models serve`` would build a fresh
environment from a package index. These commands run the tools with the project environment
(``medloc_core/environment.py``) and the flags a user cannot guess.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from medloc_core import environment, tracking

CHAMPION_URI = "models:/medloc-grounder@champion"


def tool_environment() -> dict[str, str]:
    """This process's environment (the project environment applied by the ``medloc`` entry point), with the
    MLflow store made explicit and this environment's ``bin/`` first on ``PATH`` (MLflow's local serving starts
    ``uvicorn`` by name)."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = tracking.tracking_uri()
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


def _tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def env_lines() -> list[str]:
    """``export NAME=value`` lines of the project environment, MLflow's store included."""
    names = [*environment.project_environment(environment.project_root()), "MLFLOW_TRACKING_URI"]
    env = tool_environment()
    return [f"export {name}={shlex.quote(env[name])}" for name in names]


def ui_command(*, zenml: bool, host: str, port: int) -> list[str]:
    """The MLflow UI on the project's store, or (``zenml``) ZenML's local dashboard on the project's store."""
    if zenml:
        return [_tool("zenml"), "login", "--local", "--blocking", "--port", str(port)]
    uri = tracking.tracking_uri()
    return [_tool("mlflow"), "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]


def serve_command(*, model: str, host: str, port: int) -> list[str]:
    """``mlflow models serve`` on this environment (no package index: ``--env-manager local``)."""
    return [
        _tool("mlflow"),
        "models",
        "serve",
        "-m",
        model,
        "--env-manager",
        "local",
        "--host",
        host,
        "--port",
        str(port),
    ]


def _run(command: list[str], dry_run: bool) -> int:
    if dry_run:
        print(shlex.join(command))
        return 0
    sys.stdout.flush()
    # The tool replaces this process: signals (Ctrl-C, a supervisor's SIGTERM) reach it directly.
    os.execvpe(command[0], command, tool_environment())
    return 1  # not reached


def _env(args: argparse.Namespace) -> int:
    print("\n".join(env_lines()))
    return 0


def experiment_page(host: str, port: int) -> str:
    """The URL of experiment ``medloc`` in MLflow's classic model-training view (MLflow 3's UI otherwise opens in
    its GenAI view, a per-browser setting that ``workflowType`` in the URL overrides)."""
    from mlflow import MlflowClient  # lazy: mlflow costs seconds at import

    experiment = MlflowClient(tracking.tracking_uri()).get_experiment_by_name(tracking.EXPERIMENT)
    page = f"experiments/{experiment.experiment_id}" if experiment is not None else "experiments"
    return f"http://{host}:{port}/#/{page}?workflowType=machine_learning"


def _ui(args: argparse.Namespace) -> int:
    port = args.port or (8237 if args.zenml else 5000)
    if not args.zenml and not args.dry_run:
        print(f"open {experiment_page(args.host, port)}", flush=True)
    return _run(ui_command(zenml=args.zenml, host=args.host, port=port), args.dry_run)


def _serve(args: argparse.Namespace) -> int:
    return _run(serve_command(model=args.model, host=args.host, port=args.port), args.dry_run)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "env",
        help='print the project environment as export lines (eval "$(medloc env)" for zenml/mlflow commands)',
    )
    p.set_defaults(func=_env)

    p = subparsers.add_parser(
        "ui", help="open the MLflow UI (or --zenml: ZenML's dashboard) on the project's store"
    )
    p.add_argument("--zenml", action="store_true", help="ZenML's local dashboard instead of MLflow's UI")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default 5000 (MLflow) or 8237 (ZenML)")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(func=_ui)

    p = subparsers.add_parser(
        "serve", help="serve a registered model over HTTP from this environment (offline; POST /invocations)"
    )
    p.add_argument("--model", default=CHAMPION_URI, help=f"model URI (default {CHAMPION_URI})")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(func=_serve)
