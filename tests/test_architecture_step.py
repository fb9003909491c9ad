"""No host synchronisation inside a training step. On a GPU, turning a tensor into a Python number (`.item()`,
`.tolist()`, `float()`, `int()`, `bool()`, `.cpu()`, `.numpy()`) waits for every queued kernel; a step that
does it stalls the device once per step. The step keeps its losses and counts as device tensors and the loop
reads them once per logging interval (lm.train.loop._record), which these tests check twice:

- from the source (`ast`): the step functions and every function of lm/train and lm/data/objectives.py that
  they call, transitively, contain no such call; the set reached is named here, so a new helper shows up in
  review;
- at run time: a short CPU run with the conversion methods patched, counting those that the code of lm/train
  and lm/data/objectives.py makes while a step runs (none), and how often the loop copies rows from the
  device (once per interval).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCANNED = [*sorted((REPO / "lm/train").glob("*.py")), REPO / "lm/data/objectives.py"]
STEP_FUNCTIONS = ("lm.train.step.train_step", "lm.train.step.optimizer_step")
REACHED = {  # what the step functions call in lm/train and lm/data/objectives.py, transitively
    *STEP_FUNCTIONS,
    "lm.train.step.accumulation_dtype",
    "lm.train.step.autocast_ctx",
    "lm.train.distributed.Dist.sum_over_ranks",
    "lm.train.ema.WeightAverage.update",
    "lm.train.ema.WeightAverage.decay_at",
    "lm.data.objectives.to_device",
    "lm.data.objectives.ClassifyObjective.loss_sum",
    "lm.data.objectives.ClassifyObjective.logits_and_loss_sum",
    "lm.data.objectives.MaskedLMObjective.loss_sum",
    "lm.data.objectives.CausalLMObjective.loss_sum",
}
TO_NUMBER_FUNCTIONS = {"float", "int", "bool"}
TO_HOST_METHODS = {"item", "tolist", "cpu", "numpy"}


def _functions(paths: list[Path]) -> tuple[dict[str, ast.FunctionDef], dict[str, dict[str, str]]]:
    """Module-level functions and methods of module-level classes, by qualified name; and for each, the names
    its module binds to functions (its own, and those imported with `from lm.x import f`)."""
    functions, scopes = {}, {}
    for path in paths:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        tree = ast.parse(path.read_text())
        scope = {
            alias.asname or alias.name: f"{node.module}.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lm")
            for alias in node.names
        }
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                node.parent = tree
                functions[f"{module}.{node.name}"] = node
                scope[node.name] = f"{module}.{node.name}"
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        item.parent = node
                        functions[f"{module}.{node.name}.{item.name}"] = item
        for qualname in functions:
            if qualname.startswith(module + ".") and qualname not in scopes:
                scopes[qualname] = scope
    return functions, scopes


def reached(
    functions: dict[str, ast.FunctionDef], scopes: dict[str, dict[str, str]], roots: tuple[str, ...]
) -> set[str]:
    """`roots` and every function of `functions` they call, transitively. `f(...)` is the `f` its module
    binds; `x.f(...)` is every method named `f` (`self.average.update(...)` reaches every `update`: a call
    matched by its name alone can only over-approximate)."""
    methods: dict[str, list[str]] = {}
    for qualname in functions:
        if isinstance(functions[qualname].parent, ast.ClassDef):
            methods.setdefault(qualname.rsplit(".", 1)[1], []).append(qualname)
    seen, todo = set(), list(roots)
    while todo:
        qualname = todo.pop()
        if qualname in seen:
            continue
        seen.add(qualname)
        for node in ast.walk(functions[qualname]):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                target = scopes[qualname].get(node.func.id)
                todo.extend([target] if target in functions else [])
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                todo.extend(methods.get(node.func.attr, []))
    return seen


def host_conversions(fn: ast.FunctionDef) -> list[str]:
    """The calls in `fn` that turn a tensor into a host value, as `line: source`."""
    found = []
    for node in ast.walk(fn):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (isinstance(func, ast.Name) and func.id in TO_NUMBER_FUNCTIONS) or (
            isinstance(func, ast.Attribute) and func.attr in TO_HOST_METHODS
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_step_functions_reach_the_named_functions():
    assert reached(*_functions(SCANNED), STEP_FUNCTIONS) == REACHED


def test_no_host_synchronisation_inside_a_step():
    functions, scopes = _functions(SCANNED)
    problems = {q: host_conversions(functions[q]) for q in sorted(reached(functions, scopes, STEP_FUNCTIONS))}
    assert not {q: calls for q, calls in problems.items() if calls}, (
        "a step must keep its numbers on the device (the loop reads them when it logs)"
    )


def test_the_check_sees_a_conversion():
    source = "def step(t):\n    loss = float(t)\n    return t.detach().item() + int(t) + len(t.tolist())\n"
    (fn,) = ast.parse(source).body
    assert host_conversions(fn) == [
        "2: float(t)",
        "3: t.detach().item()",
        "3: int(t)",
        "3: t.tolist()",
    ]


# ---- at run time ------------------------------------------------------------------------------------------


CONVERSIONS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")


@pytest.mark.parametrize("task, extra", [("mlm", {"train.grad_accum_steps": 2}), ("classify", {})])
def test_a_run_reads_the_device_once_per_logging_interval(tmp_path, monkeypatch, task, extra):
    """14 steps, log_every 4, eval_every 6: rows are read after steps 4, 6, 8, 12 and 14 (the last): 5 waits,
    and no conversion inside a step by the code of lm/train, lm/data/objectives.py or the model (lm/model:
    the language-model head takes the labelled rows the objective found on the host)."""
    from conftest import tiny_params, write_fake_encoded

    from lm.config import parse_params
    from lm.train import logging as train_logging
    from lm.train import loop

    scanned = {str(path) for path in [*SCANNED, *sorted((REPO / "lm/model").rglob("*.py"))]}
    inside_step, conversions, reads = [False], [], []

    def counting(name):
        real = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if inside_step[0] and caller in scanned:
                conversions.append(f"{name} in {caller}:{sys._getframe(1).f_lineno}")
            return real(self, *args, **kwargs)

        return method

    for name in CONVERSIONS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    real_step, real_host_rows = loop.train_step, train_logging.host_rows

    def step(*args, **kwargs):
        inside_step[0] = True
        try:
            return real_step(*args, **kwargs)
        finally:
            inside_step[0] = False

    def host_rows(rows):
        reads.append([row["step"] for row in rows])
        return real_host_rows(rows)

    monkeypatch.setattr(loop, "train_step", step)
    monkeypatch.setattr(loop, "host_rows", host_rows)
    write_fake_encoded(tmp_path, task, n_docs=72)
    params = parse_params(
        tiny_params(
            task=task,
            **{
                "train.batch_size": 4,
                "train.max_steps": 14,
                "train.epochs": 3,
                "train.log_every": 4,
                "train.eval_every": 6,
                "train.checkpoint_every": 100,
                "train.threads": 1,
                **extra,
            },
        )
    )
    result = loop.train(
        params,
        encoded_dir=tmp_path / "data/encoded",
        split_dir=tmp_path / "data/split",
        tokenizer_dir=tmp_path / "data/tokenizer",
        out_dir=tmp_path / "models",
        reports_dir=tmp_path / "reports",
    )
    assert result.steps == 14 and [r["step"] for r in result.step_log] == list(range(1, 15))
    assert reads == [[1, 2, 3, 4], [5, 6], [7, 8], [9, 10, 11, 12], [13, 14]]
    assert conversions == []
    assert all(isinstance(v, float | int) for row in result.step_log for v in row.values())
