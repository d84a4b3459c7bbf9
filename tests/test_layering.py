"""The shape of the code, kept by a test: which rooms may import what, and no import circles.

- `bot/domain.py`, `bot/db/`, `bot/queue/`, `bot/services/` and the pure helpers never import
  discord (only `bot/ui/`, `bot/cogs/` and the composition root `bot/__main__.py` do);
- `inference/` never imports `bot` (nor discord);
- no module-level import circles anywhere in `bot/` (imports inside functions and under
  `if TYPE_CHECKING:` do not run at import time and are left out).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DISCORD_ROOMS = ("bot.ui", "bot.cogs", "bot.__main__")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The modules `path` imports (absolute names; relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                # `from pkg import submodule` imports the submodule too.
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                if not top_level_only:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for part in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, part, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])
            elif not top_level_only and isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            ):
                visit(node.body)

    visit(tree.body)
    return found


def _imports_package(found: set[str], package: str) -> list[str]:
    return sorted(m for m in found if m == package or m.startswith(package + "."))


@pytest.mark.parametrize("name", [n for n in modules("bot") if not n.startswith(DISCORD_ROOMS)])
def test_rules_and_data_never_import_discord(name):
    """Only bot/ui/, bot/cogs/ and the composition root know discord.py."""
    found = imports(modules("bot")[name], top_level_only=False)
    assert not _imports_package(found, "discord"), name


@pytest.mark.parametrize("name", list(modules("inference")))
def test_inference_never_imports_bot_or_discord(name):
    """inference/ knows torch and diffusers, nothing of the bot."""
    found = imports(modules("inference")[name], top_level_only=False)
    assert not _imports_package(found, "bot") and not _imports_package(found, "discord"), name


def test_services_and_queue_never_import_the_discord_layer():
    """The services, the queue and the data do not reach up into ui/ or cogs/."""
    for name, path in modules("bot").items():
        if name.startswith(("bot.services", "bot.queue", "bot.db", "bot.domain")):
            found = imports(path, top_level_only=False)
            assert not _imports_package(found, "bot.ui"), name
            assert not _imports_package(found, "bot.cogs"), name


def test_no_import_circles_in_bot():
    """The module-level import graph of bot/ has no cycle."""
    known = modules("bot")
    graph = {
        name: {m for m in imports(path, top_level_only=True) if m in known and m != name}
        for name, path in known.items()
    }
    cycle = _find_cycle(graph)
    assert cycle is None, " → ".join(cycle or [])


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for neighbour in sorted(graph.get(node, ())):
            if state.get(neighbour) == 1:
                return [*path[path.index(neighbour) :], neighbour]
            if neighbour not in state and (found := visit(neighbour)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_finder_sees_a_circle():
    """The cycle finder itself: a → b → a is found, a tree is not."""
    assert _find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
