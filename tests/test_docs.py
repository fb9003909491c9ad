"""docs/attention.md stays the spec the code cites: every cited section exists, every registered attention
kind has a section, every option table gives the defaults the registry uses, every test it names exists."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from lm.attention_kinds import KINDS, resolve_attention_options

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "attention.md"
CITING = [
    "lm/**/*.py",
    "stages/**/*.py",
    "tests/**/*.py",
    "benchmarks/**/*.py",
    "docs/**/*.md",
    "README.md",
    "params.yaml",
]
CITATION = re.compile(r"docs/attention\.md(?:,?\s*§\s*(\d+(?:\.\d+)*)(?:\s*[-–]\s*(\d+(?:\.\d+)*))?)?")
HEADING = re.compile(r"^(#{2,4})\s+(\d+(?:\.\d+)*)\.?\s+(.*)$", re.M)
OPTION_ROW = re.compile(r"^\|\s*`([a-z_]+)`\s*\|\s*`([^`]*)`\s*\|", re.M)


def citing_files() -> list[Path]:
    files = {p for pattern in CITING for p in ROOT.glob(pattern) if ".venv" not in p.parts}
    return sorted(files)


def sections() -> dict[str, str]:
    """Section number -> its text (heading to the next heading of the same or a higher level)."""
    text = SPEC.read_text()
    heads = list(HEADING.finditer(text))
    out = {}
    for n, h in enumerate(heads):
        level = len(h.group(1))
        end = next((g.start() for g in heads[n + 1 :] if len(g.group(1)) <= level), len(text))
        out[h.group(2)] = text[h.start() : end]
    return out


def expand(first: str, last: str | None) -> list[str]:
    """'3.9', '3.15' -> 3.9, 3.10, ..., 3.15 (a range over the last component)."""
    if last is None:
        return [first]
    head, lo = first.rsplit(".", 1) if "." in first else ("", first)
    head2, hi = last.rsplit(".", 1) if "." in last else ("", last)
    assert head == head2, f"section range {first}-{last} spans two parents"
    return [f"{head}.{i}" if head else str(i) for i in range(int(lo), int(hi) + 1)]


def citations() -> list[tuple[str, int, str]]:
    """(file, line, section) for every 'docs/attention.md §X' (or §X-Y) in the code, docs and params."""
    found = []
    for path in citing_files():
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in CITATION.finditer(line):
                if m.group(1):
                    found += [
                        (str(path.relative_to(ROOT)), lineno, s) for s in expand(m.group(1), m.group(2))
                    ]
    return found


def test_the_spec_is_in_the_repository_and_nothing_cites_the_old_one():
    assert SPEC.is_file()
    old = "ATTENTION" + ".md"  # the spec that lived outside the repository
    stale = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in citing_files()
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if old in line.replace("docs/attention.md", "")
    ]
    assert not stale, f"cite docs/attention.md instead of {old}: {stale}"


def test_every_cited_section_exists():
    cited = citations()
    assert cited, "the code cites docs/attention.md by section (e.g. lm/model/attention/base.py, §1.3)"
    have = sections()
    missing = [f"{f}:{n} cites §{s}" for f, n, s in cited if s not in have]
    assert not missing, f"docs/attention.md has no such section: {missing}"


def test_the_spec_cites_only_its_own_sections():
    have = sections()
    text = SPEC.read_text()
    bad = sorted({s for s in re.findall(r"§(\d+(?:\.\d+)*)", text) if s not in have})
    assert not bad, f"docs/attention.md refers to missing sections {bad}"


def kind_section(kind: str) -> tuple[str, str]:
    found = [
        (num, body)
        for num, body in sections().items()
        if re.match(rf"#{{2,4}}\s+{re.escape(num)}\.?\s+`{re.escape(kind)}`\s*$", body.splitlines()[0])
    ]
    assert len(found) == 1, f"docs/attention.md needs exactly one section headed `{kind}`, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_registered_kind_has_a_section(kind):
    num, body = kind_section(kind)
    assert num.startswith("3."), f"`{kind}` should be described under §3 (the kinds), not §{num}"
    assert "Tests:" in body, f"§{num} `{kind}` should name the tests that check it"


def parse_default(cell: str):
    if cell in ("true", "false"):
        return cell == "true"
    if cell == "null":
        return None
    for cast in (int, float):
        try:
            return cast(cell)
        except ValueError:
            pass
    return cell


def same(doc, code) -> bool:
    if isinstance(code, bool) or isinstance(doc, bool) or code is None or isinstance(code, str):
        return type(doc) is type(code) and doc == code
    return isinstance(doc, (int, float)) and math.isclose(doc, code, rel_tol=1e-12)


@pytest.mark.parametrize("kind", list(KINDS))
def test_option_tables_give_the_registry_defaults(kind):
    """A kind's option is looked up in its own section, then the sections it cites (§3.9 for SLAY), then
    §1.4."""
    have = sections()
    num, body = kind_section(kind)
    order = [body] + [have[s] for s in re.findall(r"§(\d+(?:\.\d+)*)", body) if s in have and s != num]
    order.append(have["1.4"])
    for key, default in dict(resolve_attention_options(kind, {})).items():  # a dict or an options model
        row = next(
            (m.group(2) for text in order for m in OPTION_ROW.finditer(text) if m.group(1) == key), None
        )
        assert row is not None, (
            f"docs/attention.md §{num} `{kind}`: option `{key}` is not in any option table"
        )
        assert same(parse_default(row), default), (
            f"docs/attention.md §{num} `{kind}`: option `{key}` documented as {row!r}, "
            f"the code's default is {default!r}"
        )


def test_named_tests_exist():
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    named = set(re.findall(r"`(test_\w+)`", SPEC.read_text()))
    assert named, "docs/attention.md should name the tests that check each kind"
    assert not named - defined, f"docs/attention.md names tests that do not exist: {sorted(named - defined)}"
