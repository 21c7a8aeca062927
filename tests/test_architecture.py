"""The house rules, checked on the source: the library's imports form no cycle (so every import points down one
order), the library never imports ZenML, no module re-exports names through a module-level ``__getattr__``, no
module outgrows one sitting, and nothing cites a path outside the repository."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

LIBRARY = REPO / "medloc_core"
MAX_MODULE_LINES = 420  # "a module you can read top to bottom in one sitting"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (function-level imports included), except under
    ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _library_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in LIBRARY.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = {t for t in _imports(path) if t in modules and t != name}
        # Importing a.b.c runs a/__init__ and a/b/__init__ first: those are edges too.
        graph[name] = targets | {t.rsplit(".", i)[0] for t in targets for i in (1, 2) if t.count(".") > i}
        graph[name] = {t for t in graph[name] if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_library_imports_form_no_cycle() -> None:
    graph = _library_graph()
    assert len(graph) > 40  # the walk really found the package
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph) or [])


#: The library's layers, bottom up (docs/architecture.md): a module may import its own layer and the ones below.
LAYERS = (
    "leaf",
    "data",
    "model",
    "rewards",
    "curriculum",
    "training",
    "evaluation",
    "registry",
    "run_config",
    "cli",
)


def _layer(module: str) -> str:
    part = module.split(".")[1] if "." in module else "leaf"
    return (
        part if part in LAYERS else "leaf"
    )  # boxes, cron, images, locks, masking, paths, plots, prompts, tracking


def test_nothing_imports_a_layer_above_its_own() -> None:
    upward = sorted(
        (a, b)
        for a, targets in _library_graph().items()
        for b in targets
        if LAYERS.index(_layer(b)) > LAYERS.index(_layer(a))
    )
    assert not upward, upward


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_zenml() -> None:
    offenders = {
        _module_name(p): sorted(t for t in _imports(p) if t.split(".")[0] == "zenml")
        for p in LIBRARY.rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / line for line in out.stdout.splitlines() if (REPO / line).is_file()]


def test_no_module_level_getattr_re_exports() -> None:
    for path in _tracked("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert "__getattr__" not in names, path


def test_every_module_is_readable_in_one_sitting() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in _tracked("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"over {MAX_MODULE_LINES} lines: {long}"


@pytest.mark.parametrize(
    "needle", ["../shared", "shared/research", "research/methods.md", "design/system.md", "grpo_cpu.md"]
)
def test_nothing_cites_a_path_outside_the_repository(needle: str) -> None:
    files = _tracked("*.py", "*.md", "*.yaml", "*.toml", "Makefile", "Dockerfile")
    here = Path(__file__)
    cited = [str(p.relative_to(REPO)) for p in files if p != here and needle in p.read_text(encoding="utf-8")]
    assert not cited, f"{needle!r} in {cited}"
