"""The package's shape, checked: the import graph has no cycle, no front imports another,
nothing imports the command line, the fronts start without torch, and modules and functions
stay small. docs/architecture.md shows the graph this file computes.

    .venv/bin/python -m tests.test_architecture     prints the graph for the docs
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "chatfleet"
FRONTS = ("server", "router", "gateway")
# The shared vocabulary every layer may use (typed errors, sampling parameters, outputs, the
# step contract): left out of the drawn graph, which would otherwise be mostly these edges.
VOCABULARY = ("errors", "sampling_params", "outputs", "step")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _unit(module: str) -> str:
    """A module's node in the graph: its subpackage, or itself at the top level."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "chatfleet"


def package_graph() -> dict[str, set[str]]:
    """Node -> the nodes it imports (anywhere in its modules, lazy imports included)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in _modules().items():
        graph[_unit(module)]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target.startswith("chatfleet") and _unit(target) != _unit(module):
                    graph[_unit(module)].add(_unit(target))
    return dict(graph)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def mermaid() -> str:
    """The graph as the mermaid block of docs/architecture.md, without the edges into the
    shared vocabulary (and the top-level package's lazy re-export of LLM)."""
    graph = package_graph()
    lines = ["```mermaid", "flowchart TD"]
    for node in sorted(set(graph) - {"chatfleet", *VOCABULARY}):
        deps = sorted(graph[node] - set(VOCABULARY))
        lines += [f"  {node} --> {dep}" for dep in deps]
    return "\n".join(lines + ["```"])


def test_the_package_graph_has_no_cycle():
    assert _cycle(package_graph()) is None


def test_no_front_imports_another_and_nothing_imports_the_command_line():
    graph = package_graph()
    for front in FRONTS:
        assert not graph[front] & (set(FRONTS) - {front}), front
    importers = {node for node, deps in graph.items() if "entrypoints" in deps}
    assert importers == set(), importers


def test_the_docs_show_todays_graph():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert mermaid() in doc, "regenerate with: python -m tests.test_architecture"


def test_modules_and_functions_stay_small():
    """A function over the bound must say why in its docstring ("Long because ...")."""
    too_long = []
    for module, path in _modules().items():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{module}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if size > MAX_FUNCTION_LINES and "Long because" not in doc:
                    too_long.append(f"{module}.{node.name}: {size} lines")
    assert too_long == []


def test_fronts_and_the_tokenizer_import_without_torch():
    code = (
        "import sys; import chatfleet.router.router_app, chatfleet.gateway.gateway_app, "
        "chatfleet.server.api_server, chatfleet.modelfile.tokenizer, chatfleet.entrypoints.cli; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


if __name__ == "__main__":
    print(mermaid())
