"""Checkpoints: the whole training state (lm.train.state.TrainingState) in one file, so a killed run resumes
exactly.

A checkpoint is written atomically by rank 0 only and loaded with torch.load(weights_only=True), so it holds
tensors and plain Python values, never numpy objects (which is why the RNG states are converted here). A
resumed run first checks that the checkpoint was written with the same params and data. The exported model
that inference reads is another format: lm.model.export.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lm.errors import LmError
from lm.io import atomic_write_bytes
from lm.train.state import Progress, TrainingState

if TYPE_CHECKING:
    from lm.config import Params
    from lm.train.distributed import Dist
    from lm.train.trainee import Trainee

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """The process's random generators as tensors, ints and lists only (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise in memory, then write a temporary sibling and rename it over `path`: a kill at any moment
    leaves the previous checkpoint or the new one, never a truncated file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint holds tensors and plain Python values only, so loading it
    can never run code."""
    if not path.exists():
        raise LmError(f"{path} not found: train first (`lm train`)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise LmError(
            f"{path} is not a readable lm checkpoint ({type(err).__name__}); train again without --resume"
        ) from None


def remove_stale_temporaries(out_dir: Path) -> None:
    """Delete temporary files a killed writer left behind (`.checkpoint.pt.XXXX.tmp` and the like)."""
    if out_dir.is_dir():
        for tmp in out_dir.glob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)


# params that may differ between a run and its resumption: they change how, not what, is computed
RUNTIME_KEYS = (
    "train.threads",
    "train.max_restarts",
    "train.backend",
    "train.device",
    "train.compile",
    "train.log_every",
    "train.node_rank",
    "train.rdzv_endpoint",
    "train.rdzv_backend",
)


def resume_signature(params_dump: dict[str, Any]) -> dict[str, Any]:
    """The params a resumed run must share with the checkpoint, flattened to dotted keys."""
    flat: dict[str, Any] = {}
    for key in ("task", "seed"):
        flat[key] = params_dump.get(key)
    flat["data.threshold"] = params_dump.get("data", {}).get("threshold")
    for section in ("model", "train"):
        for k, v in params_dump.get(section, {}).items():
            flat[f"{section}.{k}"] = v
    for key in RUNTIME_KEYS:
        flat.pop(key, None)
    return flat


def first_difference(
    ckpt: dict[str, Any], params_dump: dict[str, Any], data_fingerprint: dict[str, Any]
) -> tuple[str, str, Any, Any] | None:
    """("params" or "data", key, the checkpoint's value, the run's value) of the first thing a checkpoint does
    not share with this run, or None when it may be resumed."""
    saved, now = resume_signature(ckpt.get("params", {})), resume_signature(params_dump)
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            return "params", key, saved.get(key), now.get(key)
    old = ckpt.get("data", {})
    for key, value in data_fingerprint.items():
        if old.get(key) != value:
            return "data", key, old.get(key), value
    return None


def check_resumable(
    ckpt: dict[str, Any], params_dump: dict[str, Any], data_fingerprint: dict[str, Any], path: Path
) -> None:
    """Refuse to resume a checkpoint written with other params or data: the continuation would not be the
    run those params describe."""
    difference = first_difference(ckpt, params_dump, data_fingerprint)
    if difference is None:
        return
    what, key, saved, now = difference
    if what == "params":
        raise LmError(
            f"{path} was written with {key}={saved!r} but the params say {now!r}: "
            "restore that value to resume, or train from scratch (without --resume)"
        )
    raise LmError(
        f"{path} was trained on other data ({key} {saved!r} != {now!r}): "
        "train from scratch (without --resume)"
    )


def why_not_resumable(
    path: Path, params_dump: dict[str, Any], data_fingerprint: dict[str, Any]
) -> str | None:
    """None when the checkpoint at `path` can be resumed with these params and data, else what differs
    (`params (train.lr)`, `data`, or an unreadable file)."""
    try:
        difference = first_difference(load_checkpoint(path), params_dump, data_fingerprint)
    except LmError:
        return "format (unreadable)"
    if difference is None:
        return None
    what, key, _, _ = difference
    return f"params ({key})" if what == "params" else "data"


class Checkpointer:
    """The checkpoint phase of the loop: rank 0 saves the trainee and the progress to `path` (every
    train.checkpoint_every steps and at the end); at the start every rank restores them (resume) or the
    previous run's checkpoint is deleted (a fresh start)."""

    def __init__(
        self,
        path: Path,
        trainee: Trainee,
        params: Params,
        data_fingerprint: dict[str, Any],
        global_batch: int,
        world: Dist,
    ):
        self.path, self.trainee, self.world = path, trainee, world
        self.params_dump, self.seed = params.model_dump(), params.seed
        self.data_fingerprint, self.global_batch = data_fingerprint, global_batch

    def begin(self, resuming: bool) -> tuple[Progress, dict[str, torch.Tensor] | None]:
        """The progress to start from and the best weights so far (rank 0's; None elsewhere)."""
        progress, best = Progress(), None
        if resuming:
            ck = load_checkpoint(self.path)
            check_resumable(ck, self.params_dump, self.data_fingerprint, self.path)
            state = TrainingState.from_dict(ck)
            del ck
            self.trainee.load(state)
            set_rng_state(state.rng)
            progress, best = state.progress, state.best_model if self.world.is_main else None
        elif self.world.is_main:
            self.path.unlink(missing_ok=True)  # a restarted worker must never find a previous run's state
        if self.world.is_main:
            remove_stale_temporaries(self.path.parent)
        self.world.barrier()  # every rank has read the checkpoint before rank 0 may overwrite it
        return progress, best

    def save(self, progress: Progress, best: dict[str, torch.Tensor] | None, *, finished: bool) -> None:
        if not self.world.is_main:
            return
        t = self.trainee
        save_checkpoint(
            self.path,
            TrainingState(
                model=t.model.state_dict(),
                optimizer=t.optimizer.state_dict(),
                scheduler=t.scheduler.state_dict(),
                scaler=t.scaler.state_dict(),
                rng=rng_state(),
                progress=progress,
                best_model=best,
                ema=t.average.state() if t.average is not None else None,
                seed=self.seed,
                global_batch=self.global_batch,
                finished=finished,
                params=self.params_dump,
                data=self.data_fingerprint,
            ).to_dict(),
        )
