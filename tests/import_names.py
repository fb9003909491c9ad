"""The dotted names a source file imports anywhere in its body (function-level imports included, relative
imports resolved), read with `ast`: shared by the dvc.yaml dependency check and the architecture check."""

from __future__ import annotations

import ast
from pathlib import Path


def imported_names(path: Path, repo: Path) -> list[str]:
    """Every imported name; `from pkg import x` yields both `pkg` and `pkg.x` (x may be a module)."""
    package = ".".join(path.relative_to(repo).with_suffix("").parts[:-1])
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.extend([base] + [f"{base}.{a.name}" for a in node.names])
    return names
