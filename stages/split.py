"""Stage `split`: train/val/test index arrays (stratified for classify) and reports/split.json."""

from __future__ import annotations

from lm.config import Params
from lm.io import atomic_dir, atomic_write_json
from lm.paths import ENCODED, SPLIT, SPLIT_REPORT


def run(params: Params, encoded_dir=ENCODED, out_dir=SPLIT, report=SPLIT_REPORT) -> None:
    import numpy as np
    from rich.console import Console

    from lm.data.encoded import Encoded
    from lm.data.split import split_indices, split_summary
    from lm.errors import LmError

    enc = Encoded.open(encoded_dir)
    enc.check_task(params.task)
    labels = None
    if params.task == "classify":
        if np.isnan(enc.targets).any():
            raise LmError(
                "split: some rows have no target; task=classify needs data.target_column on every row"
            )
        labels = enc.targets >= params.data.threshold
    parts = split_indices(
        enc.n_docs,
        val_fraction=params.split.val_fraction,
        test_fraction=params.split.test_fraction,
        seed=params.seed,
        labels=labels,
    )
    empty = [name for name in ("train", "val", "test") if len(parts[name]) == 0]
    if empty:
        raise LmError(
            f"split: {enc.n_docs} documents leave {' and '.join(empty)} empty "
            f"(train {len(parts['train'])}, val {len(parts['val'])}, test {len(parts['test'])}); "
            "use a bigger corpus (a .txt source needs blank lines or one document per line), "
            "or raise split.val_fraction / split.test_fraction"
        )
    with atomic_dir(out_dir) as tmp:
        for name, idx in parts.items():
            np.save(tmp / f"{name}.npy", idx)
    summary = split_summary(parts, labels)
    atomic_write_json(report, summary)
    Console(stderr=True).print("split: " + ", ".join(f"{k} {v['n']}" for k, v in summary.items()))
