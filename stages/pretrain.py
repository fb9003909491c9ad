"""Stage `pretrain`: train the trunk on unlabelled text before `train` fine-tunes it (optional).

With `pretrain.source` set, the unlabelled corpus (plus, with `pretrain.include_train_texts`, the texts of
the labelled train split, never its val/test rows) is read like `data.source`, encoded with this pipeline's
own tokenizer (data/tokenizer, so token ids mean the same thing in both runs), split by document and trained
with `pretrain.task` (mlm by default) on the architecture of `model`. The export lands in pretrained/, which
`train.init_from: pretrained` loads. With no source the stage only writes pretrained/pretrain.json saying so,
and `train` starts from scratch. Single process (train.nproc and train.nnodes apply to the fine-tuning run).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lm.config import Params
from lm.io import atomic_write_json
from lm.paths import PRETRAIN_REPORTS, PRETRAINED, RAW, SPLIT, TOKENIZER


def pretrain_params(params: Params) -> Params:
    """The params of the pretraining run: the same model and training settings, the pretraining task, data
    and budget, selected by validation loss, starting from scratch."""
    p = params.pretrain
    data = params.data.model_copy(
        update={
            "source": p.source,
            "text_column": p.text_column,
            "max_rows": p.max_rows,
            "target_column": None,
            "id_column": None,
            "identity_columns": [],
        }
    )
    train = params.train.model_copy(
        update={
            "epochs": p.epochs,
            "max_steps": p.max_steps,
            "init_from": None,
            "select_by": "auto",
            "sampler": "shuffle",
            "bucket_by_length": False,
            "pos_weight": "off",
            "patience": None,
            "nproc": 1,
            "nnodes": 1,
            "node_rank": 0,
            "tokens_per_epoch": p.tokens_per_epoch,
        }
    )
    lr = p.lr if p.lr is not None else params.auto_lr(p.task)  # auto: the pretraining task's
    if lr is not None:
        train = train.model_copy(update={"lr": lr, "min_lr": min(params.train.min_lr, lr)})
    encode = params.encode.model_copy(
        update={"mode": "memmap"}
    )  # its encoding lives in a temporary directory
    return params.model_copy(update={"task": p.task, "data": data, "train": train, "encode": encode})


def write_corpus(params: Params, pre: Params, raw_dir: Path, split_dir: Path, dest: Path) -> tuple[int, int]:
    """The pretraining corpus into `dest` (sharded Parquet, like data/raw): the unlabelled source streamed
    chunk by chunk (memory ~ one shard, however big the source), then the labelled train split's texts (the
    labelled corpus is read whole: it is the small one). Returns (unlabelled rows, labelled rows)."""
    import numpy as np
    import pandas as pd

    from lm.data.raw import ShardWriter
    from lm.data.sources import open_corpus

    written = 0

    def rows(text: pd.Series) -> pd.DataFrame:
        nonlocal written
        ids = np.arange(written, written + len(text)).astype(str)
        written += len(text)
        return pd.DataFrame(
            {"id": ids, "text": text.astype(str).to_numpy(), "target": np.full(len(text), np.nan)}
        )

    stream = open_corpus(pre.data, task=pre.task, seed=params.seed)
    n_labelled = 0
    with ShardWriter(dest, [], int(pre.data.shard_mb * 1e6)) as shards:
        for frame in stream:
            shards.add(rows(frame["text"]))
        if (
            params.pretrain.include_train_texts
            and (raw_dir / "corpus.parquet").exists()
            and (split_dir / "train.npy").exists()
        ):
            labelled = pd.read_parquet(raw_dir / "corpus.parquet", columns=["text"])["text"]
            train_rows = np.load(split_dir / "train.npy")
            shards.add(rows(labelled.iloc[train_rows]))
            n_labelled = len(train_rows)
    return stream.stats().n_kept, n_labelled


def run(
    params: Params,
    raw_dir=RAW,
    split_dir=SPLIT,
    tokenizer_dir=TOKENIZER,
    out_dir=PRETRAINED,
    reports_dir=PRETRAIN_REPORTS,
) -> None:
    from rich.console import Console

    from lm.io import atomic_dir, require
    from lm.train.loop import train

    console = Console(stderr=True)
    out_dir, reports_dir = Path(out_dir), Path(reports_dir)
    if not params.pretrain.source:
        note = {"enabled": False, "reason": "pretrain.source is not set"}
        with atomic_dir(out_dir) as tmp:
            atomic_write_json(tmp / "pretrain.json", note)
        with atomic_dir(reports_dir) as tmp:  # a DVC output: it must exist, and say why it is empty
            atomic_write_json(tmp / "pretrain.json", note)
        console.print("pretrain: off (set pretrain.source to pretrain on unlabelled text)")
        return
    require(Path(tokenizer_dir), "lm tokenize")
    pre = pretrain_params(params)
    from stages import encode, split

    Path("data").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pretrain-", dir="data") as work:
        work = Path(work)
        (work / "raw").mkdir()
        n_source, n_labelled = write_corpus(
            params, pre, Path(raw_dir), Path(split_dir), work / "raw" / "corpus.parquet"
        )
        console.print(
            f"pretrain: {n_source} unlabelled rows from {params.pretrain.source}"
            + (f" + {n_labelled} labelled training texts" if n_labelled else "")
            + f", task={pre.task}"
        )
        encode.run(pre, raw_dir=work / "raw", tokenizer_dir=Path(tokenizer_dir), out_dir=work / "encoded")
        split.run(pre, encoded_dir=work / "encoded", out_dir=work / "split", report=work / "split.json")
        with atomic_dir(out_dir) as tmp:
            result = train(
                pre,
                encoded_dir=work / "encoded",
                split_dir=work / "split",
                tokenizer_dir=Path(tokenizer_dir),
                out_dir=tmp,
                reports_dir=reports_dir,
            )
            (tmp / "checkpoint.pt").unlink(missing_ok=True)  # fine-tuning needs the export only
            atomic_write_json(
                tmp / "pretrain.json",
                {
                    "enabled": True,
                    "task": pre.task,
                    "source": params.pretrain.source,
                    "rows": n_source,
                    "labelled_train_texts": n_labelled,
                    "steps": result.steps,
                    "best_val_loss": result.best_val_loss,
                },
            )
