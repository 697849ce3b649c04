"""The shape of the code: no import cycles, layers that stay apart, modules of a readable size.

Pure `ast`: nothing of the project is imported. Every `import` statement counts, wherever it
stands (inside `if TYPE_CHECKING:`, a function, a `try`). Relative imports are resolved; a
package's `__init__` is a module of its own (`from bot.core import App` is an import of
`bot.core`, `from bot.core import app` one of the submodule `bot.core.app`). The packages a
dotted import passes through on its way (`bot` and `bot.core` for `import bot.core.app`) are
not counted as imports of their own.
"""

from __future__ import annotations

import ast
import functools
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "generation", "storage")
MAX_LINES = 450
ENGINE_ANY = re.compile(r"\bengine\s*:\s*(typing\.)?Any\b")


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    #: Every imported name, internal module or outside dotted name -> first line importing it.
    imports: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Graph:
    root: Path
    modules: dict[str, Module]

    def where(self, name: str, target: str) -> str:
        module = self.modules[name]
        return f"{module.path.relative_to(self.root)}:{module.imports[target]}"

    def internal(self, name: str) -> list[str]:
        return sorted(t for t in self.modules[name].imports if t in self.modules)


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def build_graph(root: Path, packages: Iterable[str] = PACKAGES) -> Graph:
    """Parse every module of `packages` under `root` and resolve what each imports."""
    packages = tuple(packages)
    modules: dict[str, Module] = {}
    trees: dict[str, ast.Module] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            name, is_package = module_name(root, path)
            modules[name] = Module(name, path, is_package)
            trees[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def known(dotted: str) -> str:
        """The module an import of `dotted` runs: itself, else its nearest known parent."""
        parts = dotted.split(".")
        if parts[0] not in packages:
            return dotted
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in modules:
                return candidate
        return dotted

    for name, tree in trees.items():
        module = modules[name]

        def add(target: str, line: int, module: Module = module) -> None:
            if target != "__future__" and not target.startswith("__future__."):
                module.imports.setdefault(target, line)

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(known(alias.name), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = resolve_from(module, node)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    add(submodule if submodule in modules else known(base), node.lineno)
    return Graph(root, modules)


def resolve_from(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.name.split(".")
    if not module.is_package:
        parts = parts[:-1]
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def find_cycles(graph: Graph) -> list[list[str]]:
    """One shortest cycle per strongly connected component (Tarjan) of the import graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.internal(node):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for name in sorted(graph.modules):
        if name not in index:
            visit(name)
    cycles = []
    for component in sorted(components):
        start = component[0]
        if len(component) > 1 or start in graph.modules[start].imports:
            cycles.append(shortest_cycle(graph, start, set(component)))
    return cycles


def shortest_cycle(graph: Graph, start: str, members: set[str]) -> list[str]:
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in graph.internal(node):
            if target not in members:
                continue
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if target not in came_from:
                came_from[target] = node
                queue.append(target)
    raise AssertionError(f"no cycle through {start}")


def describe_cycle(graph: Graph, cycle: list[str]) -> str:
    members = ", ".join(sorted(set(cycle)))
    hops = "\n".join(f"    {a} ({graph.where(a, b)}) imports {b}" for a, b in pairwise(cycle))
    return f"import cycle among {len(set(cycle))} modules: {members}\n{hops}"


def within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == prefix or name.startswith(f"{prefix}.") for prefix in prefixes)


def breaches(graph: Graph, scope: str, forbidden: Iterable[str], *, transitive: bool) -> list[str]:
    """Each import of a `forbidden` name by a module of `scope` (or, if `transitive`, by any
    module these reach through their imports), with the shortest import chain that gets there.
    """
    forbidden = tuple(forbidden)
    sources = sorted(name for name in graph.modules if within(name, [scope]))
    came_from: dict[str, str | None] = dict.fromkeys(sources)
    queue = deque(sources)
    found = []
    while queue:
        node = queue.popleft()
        for target in sorted(graph.modules[node].imports):
            if within(target, forbidden):
                chain = [node]
                while (previous := came_from[chain[-1]]) is not None:
                    chain.append(previous)
                hops = [f"{a} ({graph.where(a, b)})" for b, a in pairwise(chain)]
                route = " -> ".join([*reversed(hops), f"{node} ({graph.where(node, target)})"])
                found.append(f"    {route} imports {target}")
            elif transitive and target in graph.modules and target not in came_from:
                came_from[target] = node
                queue.append(target)
    return found


def assert_layer(scope: str, forbidden: Iterable[str], *, transitive: bool) -> None:
    graph = build_graph(ROOT)
    found = breaches(graph, scope, forbidden, transitive=transitive)
    reach = "reaches (through its imports)" if transitive else "imports"
    assert not found, f"{scope} {reach} {', '.join(forbidden)}:\n" + "\n".join(found)


@functools.cache
def project_graph() -> Graph:
    return build_graph(ROOT)


# --- the checks on the project ---------------------------------------------------------------


def test_no_import_cycles() -> None:
    graph = project_graph()
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(describe_cycle(graph, cycle) for cycle in cycles)


def test_generation_imports_no_discord_bot_or_storage() -> None:
    assert_layer("generation", ["discord", "bot", "storage"], transitive=False)


def test_storage_imports_no_discord_bot_generation_or_models() -> None:
    forbidden = ["discord", "bot", "generation", "torch", "transformers"]
    assert_layer("storage", forbidden, transitive=False)


def test_bot_core_reaches_no_discord_console_or_cli() -> None:
    forbidden = ["discord", "bot.discord", "bot.console", "bot.cli"]
    assert_layer("bot.core", forbidden, transitive=True)


def test_bot_console_reaches_no_discord() -> None:
    assert_layer("bot.console", ["discord", "bot.discord"], transitive=True)


def test_bot_discord_imports_no_console_or_cli() -> None:
    assert_layer("bot.discord", ["bot.console", "bot.cli"], transitive=False)


# generation/ by job: `tasks` (what to ask the model, and how its text is shaped), `engine`
# (scheduling and stepping requests), `model` (weights, kernels, adapters), `remote` (the
# OpenAI-compatible client), `serve` (the HTTP server), `tuning`; `types`, `errors`, `backend`
# and `outbox` at the top are shared by all of them and import none of the rooms.
GENERATION_ROOMS = ("tasks", "engine", "model", "remote", "serve", "tuning")
GENERATION_TOP = (
    "generation.types",
    "generation.errors",
    "generation.backend",
    "generation.outbox",
)


def rooms(*names: str) -> list[str]:
    return [f"generation.{name}" for name in names]


def test_generation_rooms_exist() -> None:
    missing = [
        name
        for name in GENERATION_ROOMS
        if not (ROOT / "generation" / name / "__init__.py").is_file()
    ]
    assert not missing, f"generation/ lacks the packages {missing}"


def test_generation_top_imports_no_room() -> None:
    for module in GENERATION_TOP:
        assert_layer(module, rooms(*GENERATION_ROOMS), transitive=False)


def test_generation_tasks_reach_no_engine_model_or_remote() -> None:
    """A task's rules are text in, text out: no torch, no scheduler, no HTTP."""
    assert_layer(
        "generation.tasks", rooms("engine", "model", "remote", "serve", "tuning"), transitive=True
    )


def test_generation_model_reaches_no_engine() -> None:
    """The model's code steps a batch it is given; who is in the batch is the engine's."""
    forbidden = rooms("engine", "tasks", "remote", "serve", "tuning")
    assert_layer("generation.model", forbidden, transitive=True)


def test_generation_remote_reaches_no_engine_or_model() -> None:
    """The OpenAI-compatible client needs no torch: a new backend copies `remote/`."""
    forbidden = rooms("engine", "model", "tasks", "serve", "tuning")
    assert_layer("generation.remote", forbidden, transitive=True)


def test_generation_serve_reaches_only_the_backend_face() -> None:
    """`muse serve` serves any `Backend`: it sees the protocol, its request and chunk types and
    the errors the protocol raises (`generation.errors`), never an engine or a model."""
    forbidden = rooms("engine", "model", "tasks", "remote", "tuning")
    assert_layer("generation.serve", forbidden, transitive=True)


# Exceptions to "the engine schedules and steps, the tasks shape text", each with its reason.
ENGINE_MAY_IMPORT_OF_TASKS = {
    # The worker asks a labelled form's rule (`form_turn`: `/character`, `/quest`) after each
    # token while decoding: which label it writes next, and when the form ends.
    "generation.tasks.forms",
}


def test_generation_engine_imports_of_tasks_are_named() -> None:
    found = breaches(project_graph(), "generation.engine", rooms("tasks"), transitive=False)
    unnamed = [line for line in found if line.split()[-1] not in ENGINE_MAY_IMPORT_OF_TASKS]
    assert not unnamed, "generation.engine imports tasks (name it, with its reason):\n" + "\n".join(
        unnamed
    )


def test_generation_engine_reaches_no_remote_or_serve() -> None:
    assert_layer("generation.engine", rooms("remote", "serve", "tuning"), transitive=True)


# What the benchmarks may import of tests/, each with its reason; everything else they need is
# the project's or benchmarks/' own.
BENCHMARKS_MAY_IMPORT_OF_TESTS = {
    # The Discord API emulator lives in tests/ (the contract puts it there); benchmarks/load.py
    # and loop.py drive the real bot through it.
    "tests.discord_emulator",
}


def test_benchmarks_import_no_tests_but_the_named() -> None:
    graph = build_graph(ROOT, ["benchmarks"])
    found = [
        f"    {graph.where(name, target)} imports {target}"
        for name, module in sorted(graph.modules.items())
        for target in module.imports
        if (target == "tests" or target.startswith("tests."))
        and target not in BENCHMARKS_MAY_IMPORT_OF_TESTS
    ]
    assert not found, "benchmarks/ imports tests (move it into the project):\n" + "\n".join(found)


def test_no_benchmark_script_shadows_an_installed_module() -> None:
    """`python benchmarks/X.py` puts benchmarks/ on the import path, so a script named like an
    installed module is imported in its place (a kernels.py once broke transformers' loading).
    The project's own packages are not at risk: the scripts put the repository first."""
    import importlib.util
    import sys

    def installed(name: str) -> bool:
        spec = importlib.util.find_spec(name)
        if spec is None:
            return False
        where = Path(spec.origin or ROOT).resolve()
        return ROOT not in where.parents or Path(sys.prefix).resolve() in where.parents

    shadowing = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if installed(p.stem))
    assert not shadowing, f"rename these benchmarks: {shadowing}"


def test_bot_core_package_exists() -> None:
    assert (ROOT / "bot" / "core" / "__init__.py").is_file(), "bot/core/__init__.py is missing"


def test_bot_console_package_exists() -> None:
    assert (ROOT / "bot" / "console" / "__init__.py").is_file(), (
        "bot/console/__init__.py is missing"
    )


def test_no_module_over_450_lines() -> None:
    long = []
    for module in project_graph().modules.values():
        count = len(module.path.read_text(encoding="utf-8").splitlines())
        if count > MAX_LINES:
            long.append(f"    {module.path.relative_to(ROOT)}: {count} lines")
    assert not long, f"modules over {MAX_LINES} lines (split them):\n" + "\n".join(sorted(long))


def test_no_engine_typed_any_in_bot() -> None:
    found = []
    for path in sorted((ROOT / "bot").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if ENGINE_ANY.search(line):
                found.append(f"    {path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "`engine: Any` in bot/ (give the engine its type):\n" + "\n".join(found)


# --- the checker itself, on a made-up tree ---------------------------------------------------


def write_tree(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


FAKE_TREE = {
    "bot/__init__.py": "",
    "bot/core/__init__.py": "from bot.core.app import App\n",
    "bot/core/app.py": "from . import jobs\n\nclass App: ...\n",
    "bot/core/jobs.py": (
        "from typing import TYPE_CHECKING\n"
        "from storage import Store\n"
        "if TYPE_CHECKING:\n"
        "    from .app import App\n"
    ),
    "bot/core/tools.py": "import json\nfrom bot.core import app\nfrom .. import discord\n",
    "bot/discord/__init__.py": "",
    "bot/discord/client.py": "import discord\n",
    "storage/__init__.py": "from storage.store import Store\n",
    "storage/store.py": "import sqlite3\n",
    "generation/__init__.py": "",
    "generation/engine.py": "def load():\n    from bot.discord import client\n",
}


def test_checker_resolves_imports(tmp_path: Path) -> None:
    write_tree(tmp_path, FAKE_TREE)
    graph = build_graph(tmp_path)
    assert graph.modules["bot.core"].imports == {"bot.core.app": 1}
    assert graph.modules["bot.core.app"].imports == {"bot.core.jobs": 1}
    assert graph.modules["bot.core.jobs"].imports == {
        "typing": 1,
        "storage": 2,
        "bot.core.app": 4,
    }
    assert graph.modules["bot.core.tools"].imports == {
        "json": 1,
        "bot.core.app": 2,
        "bot.discord": 3,
    }
    assert graph.modules["bot.discord.client"].imports == {"discord": 1}
    assert graph.modules["generation.engine"].imports == {"bot.discord.client": 2}


def test_checker_finds_a_cycle_through_a_type_only_import(tmp_path: Path) -> None:
    write_tree(tmp_path, FAKE_TREE)
    graph = build_graph(tmp_path)
    cycles = find_cycles(graph)
    assert cycles == [["bot.core.app", "bot.core.jobs", "bot.core.app"]]
    message = describe_cycle(graph, cycles[0])
    assert "import cycle among 2 modules: bot.core.app, bot.core.jobs" in message
    assert "bot.core.jobs (bot/core/jobs.py:4) imports bot.core.app" in message

    (tmp_path / "bot/core/jobs.py").write_text("from storage import Store\n", encoding="utf-8")
    assert find_cycles(build_graph(tmp_path)) == []


def test_checker_finds_a_breach_and_its_import_chain(tmp_path: Path) -> None:
    write_tree(tmp_path, FAKE_TREE)
    (tmp_path / "storage/store.py").write_text("import sqlite3\nimport bot.discord.client\n")
    graph = build_graph(tmp_path)
    core_rule = ["discord", "bot.discord"]
    assert breaches(graph, "bot.core", core_rule, transitive=True) == [
        "    bot.core.tools (bot/core/tools.py:3) imports bot.discord",
        "    bot.core.jobs (bot/core/jobs.py:2) -> storage (storage/__init__.py:1)"
        " -> storage.store (storage/store.py:2) imports bot.discord.client",
    ]
    assert breaches(graph, "bot.core", core_rule, transitive=False) == [
        "    bot.core.tools (bot/core/tools.py:3) imports bot.discord",
    ]
    assert breaches(graph, "generation", ["bot"], transitive=False) == [
        "    generation.engine (generation/engine.py:2) imports bot.discord.client"
    ]
    assert breaches(graph, "storage", ["discord"], transitive=False) == []  # bot.discord is not
