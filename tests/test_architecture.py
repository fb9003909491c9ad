"""The layering a newcomer relies on, checked from the source with `ast`: no import circle anywhere in lm/ and
stages/ (function-level imports included), evaluation and inference independent of the training package,
no function longer than 80 lines, and validating params.yaml without importing torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from import_names import imported_names

REPO = Path(__file__).resolve().parents[1]
FILES = sorted(p for d in ("lm", "stages") for p in (REPO / d).rglob("*.py"))
MAX_FUNCTION_LINES = 80


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in FILES}


def _imports(path: Path) -> set[str]:
    """Modules of lm/ and stages/ that `path` imports anywhere in its body (not parent packages)."""
    return {n for n in imported_names(path, REPO) if n in MODULES and n != _module(path)}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_architecture_cycle_finder_finds_a_planted_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_architecture_has_no_import_circle():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("prefix", ["lm.eval", "lm.infer", "lm.viz", "stages.evaluate", "stages.visualize"])
def test_architecture_evaluation_and_inference_do_not_import_training(prefix):
    offenders = {
        m: sorted(i for i in deps if i.startswith("lm.train"))
        for m, deps in GRAPH.items()
        if m == prefix or m.startswith(prefix + ".")
    }
    assert {m: d for m, d in offenders.items() if d} == {}


def test_architecture_functions_are_short():
    long = []
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_architecture_validating_params_imports_no_torch():
    probe = "import sys, lm.config; lm.config.load_params('params.yaml'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_architecture_params_yaml_equals_the_config_defaults():
    """One source of defaults: the shipped params.yaml validates to exactly what the config classes give with
    no params at all (each null attention option is the kind's default, each `auto` resolves alike), and it
    names every key the classes have, so `dvc exp run -S key=value` can set any of them."""
    import yaml

    from lm.config import Params, parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert parse_params(raw).model_dump() == parse_params({}).model_dump()
    for section, field in Params.model_fields.items():
        if isinstance(raw.get(section), dict):
            assert set(raw[section]) == set(field.annotation.model_fields), section
