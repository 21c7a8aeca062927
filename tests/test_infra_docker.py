"""The step image's Dockerfile pins exactly the dependencies of pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _normalize(requirement: str) -> str:
    name, sep, rest = re.match(r"^([A-Za-z0-9_.\-\[\]]+)\s*(==)?\s*(.*)$", requirement.strip()).groups()
    return name.lower().replace("_", "-") + (f"=={rest}" if sep else "")


def dockerfile_pins(text: str) -> list[str]:
    """Quoted requirements between the ``# BEGIN PINS`` and ``# END PINS`` markers."""
    match = re.search(r"^# BEGIN PINS.*?$(.*?)^# END PINS", text, re.S | re.M)
    assert match, "Dockerfile has no '# BEGIN PINS' ... '# END PINS' block"
    return re.findall(r'"([^"]+)"', match.group(1))


def test_dockerfile_pins_equal_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = sorted(_normalize(r) for r in project["dependencies"])
    pins = dockerfile_pins((REPO / "Dockerfile").read_text())
    assert len(pins) == len(set(pins)), "duplicate pins in Dockerfile"
    assert sorted(_normalize(p) for p in pins) == expected


def test_cuda_torch_is_installed_at_the_pinned_version():
    text = (REPO / "Dockerfile").read_text()
    torch_pin = next(p for p in dockerfile_pins(text) if p.startswith("torch=="))
    cuda_install = re.search(r'RUN pip install "(torch==[^"]+)" --index-url "\$\{TORCH_INDEX_URL\}"', text)
    assert cuda_install and cuda_install.group(1) == torch_pin
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+$", text, re.M)
    # The CUDA wheel must come first, or the PyPI pin resolution would install another build.
    assert text.index(cuda_install.group(0)) < text.index("# BEGIN PINS")


def test_negative_detects_drift(tmp_path: Path):
    text = (REPO / "Dockerfile").read_text().replace('"trl==1.16.0"', '"trl==1.15.0"')
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(_normalize(p) for p in dockerfile_pins(text)) != sorted(
        _normalize(r) for r in project["dependencies"]
    )


def test_dockerignore_keeps_local_state_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", ".zen", ".medloc", "mlruns", ".git", "outputs"} <= ignored
