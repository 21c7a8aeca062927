"""One lock file installs everything: make setup (hence make run, make test and CI) and the step image's
Dockerfile install ``requirements.lock``, which pins every transitive package and agrees with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def lock_pins(text: str) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of a lock file (comments skipped)."""
    pins = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and not version.startswith("="), f"lock line is not name==version: {line!r}"
        assert _name(name) not in pins, f"{name} pinned twice"
        pins[_name(name)] = version
    return pins


def drift(pyproject: dict, lock: dict[str, str]) -> list[str]:
    """pyproject requirements (runtime and dev) the lock does not satisfy."""
    project = pyproject["project"]
    problems = []
    for text in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(text)
        version = lock.get(_name(req.name))
        if version is None:
            problems.append(f"{req.name} is not in requirements.lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}{req.specifier} but the lock has {version}")
    return problems


def test_lock_pins_every_requirement_of_pyproject():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    lock = lock_pins((REPO / "requirements.lock").read_text())
    assert len(lock) > 100  # transitive packages too, not just the direct pins
    assert drift(pyproject, lock) == []
    assert lock["torch"] == "2.13.0"  # no local variant: the Dockerfile's CUDA build satisfies it


def test_negative_drift_is_detected():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    lock = lock_pins((REPO / "requirements.lock").read_text())
    assert drift(pyproject, {**lock, "trl": "1.15.0"}) == ["trl==1.16.0 but the lock has 1.15.0"]
    assert drift(pyproject, {k: v for k, v in lock.items() if k != "zenml"})


def test_make_setup_and_the_dockerfile_install_the_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "pip install -q -r requirements.lock" in makefile and "--no-deps -e ." in makefile
    assert "$(VENV)/.installed: pyproject.toml requirements.lock" in makefile
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY requirements.lock" in dockerfile and "pip install -r /tmp/requirements.lock" in dockerfile
    assert not re.search(r'"[A-Za-z0-9_.\-\[\]]+==[^"]+"\s*\\', dockerfile)  # no hand-copied pin list


def test_cuda_torch_is_installed_at_the_locked_version_first():
    text = (REPO / "Dockerfile").read_text()
    lock = lock_pins((REPO / "requirements.lock").read_text())
    cuda_install = re.search(r'RUN pip install "torch==([^"]+)" --index-url "\$\{TORCH_INDEX_URL\}"', text)
    assert cuda_install and cuda_install.group(1) == lock["torch"]
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+$", text, re.M)
    # The CUDA wheel must come first, or the lock install would pull the PyPI build.
    assert text.index(cuda_install.group(0)) < text.index("pip install -r /tmp/requirements.lock")


def test_dockerignore_keeps_local_state_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", ".zen", ".medloc", "mlruns", ".git", "outputs"} <= ignored
    assert "requirements.lock" not in ignored
