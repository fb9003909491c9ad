"""dvc.yaml against the code: every module a stage imports (transitively, function-level imports included) is
a dependency of that stage, and every code dependency is imported, so an edit to code a stage runs re-runs it
and the list cannot drift from the imports again."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from import_names import imported_names

from lm.config import Params

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# plumbing that cannot change a stage's numbers: error types, atomic writes, path constants, the CLI wrapper,
# progress lines;
# lm/config.py supplies only defaults for keys that params.yaml lists (checked below), and those are params
# deps
PLUMBING = {
    "lm/__init__.py",
    "lm/errors.py",
    "lm/io.py",
    "lm/paths.py",
    "lm/cli.py",
    "lm/config.py",
    "lm/progress.py",
    "stages/__init__.py",
}


def _module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return None


def _imports(file: Path) -> set[Path]:
    """Files of the lm / stages modules that `file` imports anywhere (and the packages on the way)."""
    found: set[Path] = set()
    for name in imported_names(file, REPO):
        if name.split(".")[0] not in ("lm", "stages"):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            if (f := _module_file(".".join(parts[:i]))) is not None:
                found.add(f)
    return found


def import_closure(file: Path) -> set[str]:
    seen: set[Path] = set()
    todo = [file]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        if f.relative_to(REPO).as_posix() not in PLUMBING:  # what plumbing imports only checks params
            todo.extend(_imports(f) - seen)
    return {f.relative_to(REPO).as_posix() for f in seen}


def _has_code(file: str) -> bool:
    """False for a package __init__ holding nothing but a docstring (nothing in it can change a result)."""
    body = ast.parse((REPO / file).read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def _stage_module(stage: dict) -> Path:
    sub = stage["cmd"].split()[1]
    return REPO / "stages" / f"{ {'eval': 'evaluate', 'viz': 'visualize'}.get(sub, sub) }.py"


def _code_deps(stage: dict) -> list[str]:
    return [d for d in stage.get("deps", []) if d.startswith(("lm", "stages"))]


def _covered(file: str, deps: list[str]) -> bool:
    return any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", sorted(DVC))
def test_dvc_deps_cover_every_module_the_stage_imports(name):
    stage = DVC[name]
    closure = {f for f in import_closure(_stage_module(stage)) - PLUMBING if _has_code(f)}
    missing = sorted(f for f in closure if not _covered(f, _code_deps(stage)))
    assert not missing, f"dvc.yaml stage {name!r} imports {missing} but does not depend on them"


@pytest.mark.parametrize("name", sorted(DVC))
def test_dvc_deps_name_only_code_the_stage_imports(name):
    stage = DVC[name]
    closure = import_closure(_stage_module(stage))
    stale = [d for d in _code_deps(stage) if not any(_covered(f, [d]) for f in closure)]
    assert not stale, f"dvc.yaml stage {name!r} depends on {stale}, which it never imports"


def test_dvc_deps_closure_follows_function_level_and_package_imports(tmp_path):
    closure = import_closure(REPO / "stages" / "evaluate.py")
    assert "lm/viz/plots.py" in closure  # imported inside a function
    assert "lm/model/tasks.py" in closure  # through lm/model/__init__.py


def test_dvc_deps_params_yaml_lists_every_config_key():
    """lm/config.py's defaults are covered by params dependencies only if params.yaml names every key."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())

    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            sub = field.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                yield from keys(sub, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    def present(key):
        node = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    absent = [k for k in keys(Params) if not present(k)]
    assert not absent, f"params.yaml lacks {absent}"


def test_dvc_deps_outputs_are_the_paths_lm_paths_names():
    """dvc.yaml and lm/paths.py name the same outputs (the stages' defaults come from lm/paths.py)."""
    import lm.paths

    named = {str(v) for v in vars(lm.paths).values() if isinstance(v, Path)}

    def paths(entries):
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]

    declared = {p for stage in DVC.values() for p in paths(stage.get("outs")) + paths(stage.get("metrics"))}
    unnamed = sorted(p for p in declared if p not in named)
    assert unnamed == [], f"dvc.yaml outputs not named in lm/paths.py: {unnamed}"
