"""The forward pass stays readable in one sitting (issue 20, item 3): few keyword parameters on the forward
path, one `Pass` per call shared by every block, training forward apart from cached decoding, and attention
classes that say what they are themselves.

The forward path, as this file checks it: every method of a torch.nn.Module subclass defined in lm/model or
lm/train, except `__init__` (construction runs once, not per call), plus every module-level function of those
two packages that a forward-path function calls by its bare name, followed transitively. A function's keyword
parameters are those a caller may pass by keyword: positional-or-keyword and keyword-only ones, without the
`self` / `cls` of a method; a `**kwargs` counts as more than any limit.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import torch

from lm.attention_kinds import PerformerOptions, resolve_attention_options
from lm.config import ModelConfig
from lm.model import CausalLM, build_model
from lm.model.attention import Attention, Pass
from lm.model.attention.performer import PerformerAttention
from lm.model.block import Block
from lm.model.transformer import Transformer

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lm/model", "lm/train")
MAX_KEYWORD_PARAMETERS = 6
UNBOUNDED = 10**6


def keyword_parameters(fn: ast.FunctionDef, is_method: bool) -> int:
    """How many parameters of `fn` a caller may pass by keyword (see the module docstring)."""
    args = fn.args
    named = [a.arg for a in args.args + args.kwonlyargs]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    if is_method and not static and args.args and not args.posonlyargs:
        named = named[1:]  # self / cls
    return UNBOUNDED if args.kwarg is not None else len(named)


def forward_path(sources: dict[str, str]) -> dict[str, tuple[ast.FunctionDef, bool]]:
    """{qualified name: (function, is_method)} of the forward path of `sources` ({file name: code})."""
    trees = {name: ast.parse(code) for name, code in sources.items()}
    classes = {
        (file, node.name): node
        for file, tree in trees.items()
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    }
    functions: dict[str, list[tuple[str, ast.FunctionDef]]] = {}
    for file, tree in trees.items():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                functions.setdefault(node.name, []).append((file, node))

    def base_name(base: ast.expr) -> str:
        return base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")

    modules = {"Module"}  # class names known to be nn.Module subclasses; grown until nothing changes
    while True:
        grown = {cls.name for cls in classes.values() if any(base_name(b) in modules for b in cls.bases)}
        if grown <= modules:
            break
        modules |= grown
    path: dict[str, tuple[ast.FunctionDef, bool]] = {}
    for (file, name), cls in classes.items():
        if name in modules:
            for node in cls.body:
                if isinstance(node, ast.FunctionDef) and node.name != "__init__":
                    path[f"{file}:{name}.{node.name}"] = (node, True)
    todo = [fn for fn, _ in path.values()]
    while todo:
        for call in ast.walk(todo.pop()):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
                for file, fn in functions.get(call.func.id, []):
                    if f"{file}:{fn.name}" not in path:
                        path[f"{file}:{fn.name}"] = (fn, False)
                        todo.append(fn)
    return path


def too_many_keywords(sources: dict[str, str]) -> list[str]:
    return sorted(
        f"{name} ({n} keyword parameters)"
        for name, (fn, is_method) in forward_path(sources).items()
        if (n := keyword_parameters(fn, is_method)) > MAX_KEYWORD_PARAMETERS
    )


def lm_sources() -> dict[str, str]:
    return {
        str(path.relative_to(REPO)): path.read_text()
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


def test_architecture_forward_check_finds_a_planted_violation():
    """The checker itself: a Module method and a helper it calls are on the path; __init__ and a function no
    forward-path code calls are not."""
    planted = {
        "m.py": (
            "class Base(nn.Module):\n"
            "    def __init__(self, a, b, c, d, e, f, g): ...\n"
            "class Layer(Base):\n"
            "    def forward(self, x, *, a, b, c, d, e): return helper(x)\n"
            "def helper(x, a=0, b=0, c=0, d=0, e=0, f=0, g=0): ...\n"
            "def unused(x, a, b, c, d, e, f, g): ...\n"
        )
    }
    assert too_many_keywords(planted) == ["m.py:helper (8 keyword parameters)"]
    assert set(forward_path(planted)) == {"m.py:Layer.forward", "m.py:helper"}


def test_architecture_forward_path_has_at_most_6_keyword_parameters():
    """Options travel in one object (`Pass`), not as a string of keywords threaded through every layer."""
    path = forward_path(lm_sources())
    assert (
        "lm/model/attention/base.py:Attention.forward" in path and "lm/model/block.py:Block.forward" in path
    )
    assert too_many_keywords(lm_sources()) == []


def test_architecture_one_pass_object_reaches_every_block():
    """The trunk builds the per-call options once; every block receives that same object."""
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, n_layers=3, dropout=0.0)
    model = build_model(cfg, task="mlm", vocab_size=40, max_len=16, pad_id=1).eval()
    seen: list[Pass] = []
    for block in model.trunk.blocks:
        block.register_forward_pre_hook(lambda _module, args: seen.append(args[1]))
    with torch.no_grad():
        model(torch.randint(0, 40, (2, 9)), torch.ones(2, 9, dtype=torch.long))
    assert len(seen) == 3 and all(p is seen[0] for p in seen) and isinstance(seen[0], Pass)
    assert seen[0].key_mask.dtype == torch.bool and not seen[0].causal


def test_architecture_training_forward_never_sees_the_cache():
    """Cached decoding is its own path (`decode`): the training forward of the model, trunk, block and
    attention takes no cache, state or use_cache, and the classifier's CLS-only trick no argument there."""
    for forward in (CausalLM.forward, Transformer.forward, Block.forward, Attention.forward):
        names = set(inspect.signature(forward).parameters)
        assert not names & {"cache", "state", "use_cache", "rows", "final_rows"}, forward.__qualname__
    for owner in (CausalLM, Transformer, Block, Attention):
        assert callable(getattr(owner, "decode", None)), owner.__name__


class WidePerformer(PerformerAttention):
    """A kind's subclass defined outside lm.model.attention (here, in a test module)."""


def test_architecture_a_subclass_outside_the_package_keeps_its_kind_and_options():
    assert WidePerformer.__module__ != PerformerAttention.__module__
    assert WidePerformer.kind == "performer" and WidePerformer.Options is PerformerOptions
    options = resolve_attention_options(WidePerformer.kind, {"num_features": 8, "kernel": "softmax"})
    layer = WidePerformer(d_model=16, n_heads=2, max_len=16, options=options)
    assert layer.kind == "performer" and isinstance(layer.opts, PerformerOptions)
    assert layer.opts.num_features == 8 and layer.omega.shape == (2, 8, 8)
    out = layer(torch.randn(2, 5, 16), Pass(causal=True)).out
    assert out.shape == (2, 5, 16) and torch.isfinite(out).all()


def test_architecture_no_identity_from_module_paths():
    """Nothing in lm/model rebuilds what a class is from where it lives."""
    for name, code in lm_sources().items():
        if name.startswith("lm/model"):
            assert "__module__" not in code and "__qualname__" not in code, name
