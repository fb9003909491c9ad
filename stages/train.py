"""Stage `train`: train the model and write models/ (export + checkpoint) and reports/train/.

With train.nproc > 1 this re-launches itself under torchrun (`python -m torch.distributed.run
--standalone`), one process per rank; each rank then takes the same code path with its own rank.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lm.config import Params
from lm.io import require
from lm.paths import ENCODED, MODELS, SPLIT, TOKENIZER, TRAIN_REPORTS


def launch_torchrun(nproc: int, params_path: Path) -> None:
    from lm.errors import LmError

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "stages.train", "--params", str(params_path),
    ]
    code = subprocess.call(cmd)
    if code != 0:
        raise LmError(f"train: torchrun with {nproc} processes exited with code {code} (see the log above)")


def run(params: Params, params_path: Path = Path("params.yaml"), out_dir=MODELS, reports_dir=TRAIN_REPORTS) -> None:
    from lm.train.distributed import in_torchrun

    require(ENCODED / "meta.json", "lm encode")
    require(SPLIT / "train.npy", "lm split")
    if params.train.nproc > 1 and not in_torchrun():
        launch_torchrun(params.train.nproc, params_path)
        return
    train_here(params, out_dir=out_dir, reports_dir=reports_dir)


def train_here(params: Params, out_dir=MODELS, reports_dir=TRAIN_REPORTS) -> None:
    from lm.train.loop import train

    out_dir, reports_dir = Path(out_dir), Path(reports_dir)
    result = train(
        params, encoded_dir=ENCODED, split_dir=SPLIT, tokenizer_dir=TOKENIZER, out_dir=out_dir,
        reports_dir=reports_dir,
    )
    if result is not None and result.history:
        from lm.viz.plots import plot_training_curves

        plot_training_curves(result.history, reports_dir / "curves.png")


def _main() -> None:
    """Entry for torchrun workers: `python -m stages.train --params PATH`."""
    import argparse

    from lm.config import ConfigError, load_params
    from lm.errors import LmError

    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    try:
        train_here(load_params(args.params))
    except (ConfigError, LmError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _main()
