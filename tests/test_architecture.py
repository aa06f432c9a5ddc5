"""Architecture rules: import boundaries, no import cycles, commands above the library, optional heavy packages in
one module each, module size, no prints."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "sdar"
MODULES = sorted(p for p in PKG.rglob("*.py"))
MAX_LINES = 800

# heavy optional package -> the one module allowed to import it (inside a function, never at module level)
HEAVY = {
    "vllm": {"sdar/rollout/vllm_engine.py"},
    "ray": set(),  # no module may import it
    "alfworld": {"sdar/envs/alfworld/_engine.py"},
    "textworld": {"sdar/envs/alfworld/_engine.py"},
    "fast_downward": {"sdar/envs/alfworld/_engine.py"},
    "faiss": {"sdar/envs/search/dense.py"},
    "sentence_transformers": {"sdar/envs/search/dense.py"},
    "bm25s": {"sdar/envs/bm25.py"},
    "gguf": {"sdar/models.py"},
    "tensorboard": {"sdar/metrics.py"},
    "torch.utils.tensorboard": {"sdar/metrics.py"},
    "peft": {"sdar/learner/lora.py"},
    "matplotlib": {"sdar/plots.py"},
}
STDLIB = set(sys.stdlib_module_names)
COMMAND_NAMES = ("cli", "train", "sft", "evaluate", "compare", "report", "demo")
"""The user-facing commands; each lives in ``sdar/commands/``, the layer above the library."""


def is_command(module: str) -> bool:
    """True for ``sdar.commands`` and its modules, and ``sdar.__main__`` (``python -m sdar``)."""
    return module == "sdar.__main__" or module == "sdar.commands" or module.startswith("sdar.commands.")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = set(id(n) for n in tree.body)
    # imports under `if TYPE_CHECKING:` at top level count as module level too (they are harmless but rare)
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside the package
                names = ["sdar"]
            else:
                names = [node.module or ""]
        out.extend((n, id(node) in top_level) for n in names)
    return out


def test_there_are_modules_to_check():
    assert len(MODULES) >= 10


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_module_size(path: Path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{rel(path)} has {n} lines; split it (limit {MAX_LINES})"


def test_algo_imports_only_torch_and_stdlib():
    for path in (PKG / "algo").rglob("*.py"):
        for name, _ in imports(path):
            root = name.split(".")[0]
            ok = (root in STDLIB or root == "torch" or name.startswith("sdar.algo") or name == "sdar.names"
                  or root == "__future__")
            if name == "sdar":  # relative import: must stay inside sdar.algo
                src = path.read_text()
                ok = "from .." not in src
            assert ok, f"{rel(path)} imports {name}; sdar.algo may import only torch, sdar.names and the standard library"


@pytest.mark.parametrize("sub", ["envs", "prompts"])
def test_text_layers_do_not_import_torch(sub: str):
    for path in (PKG / sub).rglob("*.py"):
        for name, _ in imports(path):
            root = name.split(".")[0]
            assert root not in ("torch", "transformers"), f"{rel(path)} imports {name}; {sub} is text-only"


def test_records_and_config_depend_on_nothing_in_the_package():
    # one exception: validate() reads the per-environment facts from the (text-only) registry, inside the function
    for path in (PKG / "records.py", PKG / "config.py", PKG / "names.py"):
        for name, top in imports(path):
            registry = path.name == "config.py" and name == "sdar.envs.registry" and not top
            assert not name.startswith("sdar") or name == "sdar.names" or registry, f"{rel(path)} imports {name}"
            assert name.split(".")[0] not in ("torch", "transformers"), f"{rel(path)} imports {name}"


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_heavy_packages_stay_in_their_module(path: Path):
    for name, top in imports(path):
        for heavy, allowed in HEAVY.items():
            if name == heavy or name.startswith(heavy + "."):
                assert rel(path) in allowed, f"{rel(path)} imports {name}; only {sorted(allowed)} may"
                assert not top, f"{rel(path)} imports {name} at module level; import it inside the function"


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_no_print_in_package(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            pytest.fail(f"{rel(path)}:{node.lineno} calls print(); use logging or sys.stdout.write in the CLI")


def test_light_imports_do_not_pull_heavy_stacks():
    code = (
        "import sys, sdar, sdar.config, sdar.records, sdar.algo, sdar.envs, sdar.prompts, sdar.commands.cli\n"
        "bad = [m for m in ('transformers', 'vllm', 'ray', 'alfworld', 'textworld', 'tensorboard') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Package module -> the package modules it imports (at any depth of the file, relative imports resolved; an
    import of ``pkg.mod`` is an edge to ``pkg.mod`` alone, not to ``pkg``'s ``__init__``)."""
    known = {module_name(p): p for p in MODULES}
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in known)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    edges.add(sub if sub in known else module)
        graph[name] = {e for e in edges if e in known and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycles():
    found = cycles(import_graph())
    assert not found, f"import cycles (move the shared piece down a layer): {found}"


def test_the_commands_live_in_one_folder():
    graph = import_graph()
    missing = [name for name in COMMAND_NAMES if f"sdar.commands.{name}" not in graph]
    assert not missing, f"commands missing from sdar/commands/: {missing}"
    strays = [m for m in graph if m.rsplit(".", 1)[-1] in COMMAND_NAMES and not is_command(m)]
    assert not strays, f"command modules outside sdar/commands/: {strays}"


def test_library_modules_do_not_import_the_commands():
    graph = import_graph()
    bad = {m: sorted(t for t in targets if is_command(t))
           for m, targets in graph.items() if not is_command(m) and any(is_command(t) for t in targets)}
    assert not bad, f"library modules import commands (the layer above them): {bad}"


def test_the_command_rule_can_fail():
    assert is_command("sdar.commands.train") and is_command("sdar.__main__")
    assert not is_command("sdar.commandsx") and not is_command("sdar.runtime")

