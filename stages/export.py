"""Stage `export`: the trained classifier as TorchScript and INT8 artifacts under serving/, each checked
against the eager model on the test split in reports/serving.json (lm/serving/export.py does the work)."""

from __future__ import annotations

from lm.config import Params
from lm.paths import ENCODED, MODELS, SERVING, SERVING_REPORT, SPLIT


def run(
    params: Params,
    model_dir=MODELS,
    encoded_dir=ENCODED,
    split_dir=SPLIT,
    out_dir=SERVING,
    report_path=SERVING_REPORT,
) -> dict:
    from pathlib import Path

    from rich.console import Console

    from lm.io import require
    from lm.serving.export import export_serving, summary_lines

    require(Path(model_dir) / "config.json", "lm train")
    report = export_serving(
        Path(model_dir),
        Path(encoded_dir),
        Path(split_dir),
        Path(out_dir),
        Path(report_path),
        threshold=params.threshold,
        batch_size=params.eval.batch_size,
    )
    console = Console(stderr=True)
    for line in summary_lines(report):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return report
