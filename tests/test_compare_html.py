"""`lm compare --html`: one self-contained page (no script, nothing fetched from the network) with the table
and the curves overlaid, one legend entry per experiment, read at each experiment's revision."""

from __future__ import annotations

import re

import compare_fixture
import pytest
import yaml
from compare_reports import figures
from typer.testing import CliRunner

from lm.cli import app
from lm.compare.curves import read_curves
from lm.compare.runs import read_runs

runner = CliRunner()
CLASSIFY_RUNS = {"workspace", "main", "deeper", "performer", "seed1", "sweep-0", "sweep-1", "sweep-2"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return compare_fixture.experiments(tmp_path_factory)


@pytest.fixture(scope="module")
def page(repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("page")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        result = runner.invoke(app, ["compare", "--html", str(out / "runs.html")])
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'runs.html'}" in result.output
    assert [p.name for p in out.iterdir()] == ["runs.html"]  # one file, no temporary left beside it
    return (out / "runs.html").read_text()


def figure(page: str, title: str) -> str:
    """The <svg> of the figure whose title starts with `title`."""
    found = re.search(rf'<figure aria-label="{re.escape(title)}[^"]*">(.*?)</figure>', page, re.DOTALL)
    assert found, f"no figure {title!r}"
    return found.group(1)


def legend(svg: str) -> list[str]:
    """The legend's entries (matplotlib keeps text as <text> with svg.fonttype none)."""
    return re.findall(r"<text[^>]*>([^<]*)</text>", svg[svg.index('id="legend_1"') :])


@pytest.mark.slow
def test_compare_html_is_one_offline_page(page):
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched
    assert not re.search(r"url\(\s*['\"]?https?:", page)
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page  # SVGs inlined as elements
    assert 'class="dataframe runs"' in page and "sweep-0 +2" in page and "±" in page


@pytest.mark.slow
def test_compare_html_overlays_one_curve_per_experiment(page):
    assert page.count("<svg") == 4
    for title in ("ROC", "Precision-recall"):
        assert sorted(legend(figure(page, title))) == sorted(CLASSIFY_RUNS)  # no mlm: it has no ROC
    assert sorted(legend(figure(page, "Loss, task classify"))) == sorted(CLASSIFY_RUNS)
    assert legend(figure(page, "Loss, task mlm")) == ["mlm"]


@pytest.mark.slow
def test_compare_curves_are_read_at_each_experiments_revision(repo):
    curves = {c.name: c for c in read_curves(read_runs(cwd=repo), cwd=repo)}
    head = yaml.safe_load((repo / "params.yaml").read_text())
    deeper = figures({**head, "model": {**head["model"], "n_layers": 6}})
    assert curves["deeper"].roc["tpr"].tolist()[1] == pytest.approx(deeper["roc_auc"] - 0.2)
    assert curves["workspace"].roc["tpr"].tolist()[1] == pytest.approx(figures(head)["roc_auc"] - 0.2)
    assert curves["mlm"].roc.empty and curves["mlm"].task == "mlm"
    assert curves["mlm"].train_loss["train_loss"].iloc[-1] == pytest.approx(4.0 * (1 + 1 / 20))
    assert curves["deeper"].val_loss["step"].tolist() == [5, 10, 15, 20]
