"""The layers, as the README draws them: imports point down only. Read from the source (every
import statement, type-checking ones included), so a sideways import fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A package (by path prefix) and the top-level packages or modules it must never import.
# The task layer's modules: the steps, and what the steps share.
STEPS = tuple(
    f"tasks.{name}"
    for name in (
        "batch", "cache", "cost", "lease", "plan", "publish", "quota", "requests", "summary",
        "validate", "write", "retry", "memory", "failpoints", "insight", "logs", "versions",
    )
)  # fmt: skip
FORBIDDEN = {
    "tasks/core/": ("prefect", "flows", "tasks.edges", *STEPS),
    "tasks/edges/": ("flows", *STEPS),
    "kinds/": ("prefect", "flows", "tasks"),
    "schemas/": ("prefect", "flows", "tasks"),
    "emulator/": ("flows", "tasks", "schemas", "kinds"),
    "tasks/": ("flows",),
    # The analysts' library runs in a plain Python session: storage, settings, the Mistral
    # gateway and the pure core, never Prefect, a step, a flow or the emulator.
    "enrich/": ("prefect", "flows", "deployments", "emulator", *STEPS),
}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def modules() -> list[Path]:
    return sorted(
        p
        for prefix in FORBIDDEN
        for p in (ROOT / prefix).rglob("*.py")
        if "__pycache__" not in str(p)
    )


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    relative = str(path.relative_to(ROOT))
    rules = [banned for prefix, banned in FORBIDDEN.items() if relative.startswith(prefix)]
    wrong = sorted(
        name
        for name in imports(path)
        for banned in rules
        for ban in banned
        if name == ban or name.startswith(ban + ".")
    )
    assert not wrong, f"{relative} imports {wrong}"


def test_every_step_is_a_task_named_as_its_function() -> None:
    """One naming rule: a task's function has its Prefect name (``submit`` is "submit")."""
    import importlib
    import pkgutil

    import tasks

    named = {}
    for module in pkgutil.iter_modules(tasks.__path__):
        loaded = importlib.import_module(f"tasks.{module.name}")
        for attr, value in vars(loaded).items():
            if getattr(value, "__module__", None) == loaded.__name__ and hasattr(value, "fn"):
                named[f"{module.name}.{attr}"] = value.name
    assert named, "no task found"
    assert {k: v for k, v in named.items() if k.split(".")[1] != v.replace("-", "_")} == {}
