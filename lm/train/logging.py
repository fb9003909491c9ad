"""Training telemetry on rank 0: dvclive metrics (one row per optimizer step) and a rich progress bar.

dvclive writes reports/train/plots/metrics/<name>.tsv (declared as plots in dvc.yaml) and
reports/train/metrics.json (the summary). Every logged row is also kept in memory and stored in the
checkpoint (`StepLog.state`), so a resumed run starts dvclive afresh and replays the rows up to the
checkpoint: the curves hold each step exactly once, as in an uninterrupted run, even when the killed run
had logged past its last checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

STEP_METRICS = ("train_loss", "lr", "grad_norm", "tokens_per_s")  # every optimizer step
EVAL_METRICS = ("val_loss", "val_roc_auc", "train_loss_avg")  # every validation pass (val_roc_auc: classify)


def host_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `rows` with every tensor value a Python float, copied from the device in one transfer: where
    the training loop waits for the device, once per logging interval.

    >>> host_rows([{"step": 1, "loss": torch.tensor(0.5)}, {"step": 2, "loss": torch.tensor(0.25)}])
    [{'step': 1, 'loss': 0.5}, {'step': 2, 'loss': 0.25}]"""
    tensors = [v for row in rows for v in row.values() if isinstance(v, torch.Tensor)]
    numbers = iter(torch.stack([t.detach().reshape(()) for t in tensors]).tolist() if tensors else [])
    return [{k: next(numbers) if isinstance(v, torch.Tensor) else v for k, v in row.items()} for row in rows]


class StepLog:
    """One dict per optimizer step ({"step", *STEP_METRICS, *EVAL_METRICS where evaluated}); stored as
    float64 columns (NaN = not logged at that step) so a long run's checkpoint stays compact."""

    COLUMNS = ("step", *STEP_METRICS, *EVAL_METRICS)

    def __init__(self, rows: list[dict[str, Any]] | None = None):
        self.rows: list[dict[str, Any]] = list(rows or [])

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def state(self) -> dict[str, Any]:
        table = torch.full((len(self.rows), len(self.COLUMNS)), math.nan, dtype=torch.float64)
        for i, row in enumerate(self.rows):
            for j, key in enumerate(self.COLUMNS):
                value = row.get(key)
                if value is not None:
                    table[i, j] = float(value)
        return {"columns": list(self.COLUMNS), "table": table}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StepLog:
        columns, table = state["columns"], state["table"]
        rows = []
        for values in table.tolist():
            row = {k: v for k, v in zip(columns, values) if not math.isnan(v)}
            row["step"] = int(row["step"])
            rows.append(row)
        return cls(rows)


class TrainLogger:
    """dvclive + progress bar when `enabled` (rank 0); a no-op elsewhere."""

    def __init__(
        self, enabled: bool, out_dir: Path, total_steps: int, console, replay: StepLog | None = None
    ):
        self.live = None
        self.progress = None
        self.heartbeat = None
        self.console = console
        if not enabled:
            return
        from dvclive import Live
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        # resume=False wipes the previous curves; the replay below restores them up to the checkpoint
        self.live = Live(dir=str(out_dir), dvcyaml=False, save_dvc_exp=False, report=None)
        for row in replay.rows if replay else []:
            self._live_row(row)
        done = replay.rows[-1]["step"] if replay and replay.rows else 0
        if not console.is_terminal:  # under DVC / CI rich draws nothing: a line every 10 s with rate and ETA
            from lm.progress import Heartbeat

            self.heartbeat = Heartbeat("train", total_steps, "steps")
            self.heartbeat.done = done
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=done, loss="")
        self.progress.start()

    def _live_row(self, row: dict[str, Any]) -> None:
        self.live.step = int(row["step"])
        for key, value in row.items():
            if key != "step" and value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.live.log_metric(key, value)
        self.live.next_step()

    def log(self, row: dict[str, Any]) -> None:
        if self.live is None:
            return
        self._live_row(row)
        if self.heartbeat is not None:
            self.heartbeat.update(row["step"], extra=f"loss {row['train_loss']:.4f}")
        else:
            self.progress.update(self.task, completed=row["step"], loss=f"loss {row['train_loss']:.4f}")

    def print(self, text: str) -> None:
        self.console.print(text)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.live is not None:
            self.live.step = max(self.live.step - 1, 0)  # next_step() moved past the last logged step
            for key, value in (summary or {}).items():
                if value is not None:
                    self.live.summary[key] = value
            self.live.make_summary()
            self.live.end()
            self.live = None
