"""Corpus sources: `data.source` read chunk by chunk into the canonical corpus frame the pipeline uses.

Every source -- the embedded generator, a Hugging Face dataset (hub id or local directory), a local
.csv/.parquet/.jsonl/.txt file -- ends up as the same frame, so later stages never care where text came from:

    id      str      the source's id column, or the source row number when data.id_column is None
    text    str      never empty or whitespace-only (such rows are dropped and counted)
    target  float64  in [0, 1]; NaN only when task != "classify" (no target column, or an empty cell)
    <identity columns>  float64 in [0, 1] or NaN (not annotated): those of data.identity_columns present

`open_corpus` streams: the source is read `READ_ROWS` rows at a time (pandas chunks, Parquet batches, lines of
a .txt/.jsonl, batches of a Hugging Face dataset, streamed or not) and each chunk is mapped and validated on
its own, so memory does not grow with the corpus (the download stage writes each chunk into the shards of
lm.data.raw as it comes). `load_corpus` gathers the chunks into one frame for small corpora and tests.

Rows keep the source order (index reset), so the corpus is a deterministic function of (config, seed).
Bad input stops with one `LmError` line naming the file, column or row and the fix, because a typo in
params.yaml should cost a second, not a tokenizer run. `CorpusStats.to_manifest()` records what was read
for data/raw/manifest.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lm.config import TASKS, DataConfig, repository_root
from lm.data.synthetic import BIASED_IDENTITIES, SUPPORTED_IDENTITIES, generate_corpus
from lm.data.text_encoding import text_encoding
from lm.errors import LmError

EXTENSIONS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".txt": "txt",
    ".tokens": "txt",
}  # .tokens: the WikiText files, paragraphs separated by blank lines
READ_ROWS = 8192  # source rows read, mapped and validated at a time
_MAX_LISTED = 60  # columns listed in a 'column missing' message before eliding


@dataclass
class CorpusStats:
    """What load_corpus read and kept; `to_manifest()` is the JSON written beside the corpus."""

    source: str
    kind: str  # embedded | hf | csv | parquet | jsonl | txt
    task: str
    n_read: int
    n_kept: int
    n_dropped_empty: int
    identity_columns: list[str]
    synthetic: bool
    text_column: str
    target_column: str | None  # None when the source has no target
    id_column: str | None
    max_rows: int | None
    threshold: float
    n_positive: int | None = None  # rows with target >= threshold (None without a target)
    positive_rate: float | None = None
    target_mean: float | None = None
    identity_columns_missing: list[str] = field(default_factory=list)  # asked for, absent from the source
    n_identity_annotated: int = 0  # rows with at least one identity value
    n_chars: int = 0
    details: dict[str, Any] = field(default_factory=dict)  # source-specific: seed, hf config, file size...

    def to_manifest(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("positive_rate", "target_mean"):
            if out[key] is not None:
                out[key] = round(float(out[key]), 6)
        return json.loads(json.dumps(out))  # proves it is JSON-serialisable, and copies


@dataclass
class _Raw:
    """A source opened for reading, before mapping: its chunks, the names to map, and how to describe it."""

    chunks: Iterable[
        pd.DataFrame
    ]  # the needed source columns, READ_ROWS rows at a time, at most max_rows in all
    label: str  # how messages name the source: a path or data.source
    kind: str
    text: str
    target: str | None  # None: the source has no target column
    id: str | None
    identities: list[str]
    missing_identities: list[str]
    synthetic: bool = False
    details: dict[str, Any] = field(default_factory=dict)


def open_corpus(cfg: DataConfig, *, task: str, seed: int) -> CorpusStream:
    """Open `cfg.source` for streaming: columns are checked now, rows as they are read."""
    if task not in TASKS:
        raise LmError(f"task must be one of {list(TASKS)}, got {task!r}")
    source = cfg.source.strip()
    if source == "embedded":
        raw = _read_embedded(cfg, seed)
    elif source.startswith("hf:"):
        raw = _read_hf(source[3:], cfg, task)
    else:
        raw = _read_local(source, cfg, task)
    return CorpusStream(raw, cfg, task)


def load_corpus(cfg: DataConfig, *, task: str, seed: int) -> tuple[pd.DataFrame, CorpusStats]:
    """Read `cfg.source`, map its columns, drop empty texts, validate; return the whole corpus and its
    stats."""
    stream = open_corpus(cfg, task=task, seed=seed)
    frames = list(stream)
    return pd.concat(frames, ignore_index=True), stream.stats()


# ----------------------------------------------------------------------------------------------------------
# Readers: each checks the columns it needs, then yields at most cfg.max_rows rows in chunks, in source order.
# ----------------------------------------------------------------------------------------------------------


def _read_embedded(cfg: DataConfig, seed: int) -> _Raw:
    n = cfg.n_rows if cfg.max_rows is None else min(cfg.n_rows, cfg.max_rows)
    known, missing = cfg.identities_in(SUPPORTED_IDENTITIES)
    frame = generate_corpus(n, seed, known)  # bounded by data.n_rows
    chunks = (frame.iloc[i : i + READ_ROWS] for i in range(0, n, READ_ROWS))
    details = {
        "generator": "lm.data.synthetic",
        "seed": seed,
        "n_rows": n,
        "biased_identities": list(BIASED_IDENTITIES),
    }
    return _Raw(
        chunks,
        "embedded corpus",
        "embedded",
        "text",
        "target",
        "id",
        known,
        missing,
        synthetic=True,
        details=details,
    )


def _needed(
    columns: list[str], cfg: DataConfig, task: str, label: str
) -> tuple[str | None, list[str], list[str]]:
    """Check the mapped columns exist; return (target column or None, present identities, missing ones)."""
    have = set(columns)
    if cfg.text_column not in have:
        raise LmError(
            f"{label}: no text column {cfg.text_column!r} (columns: {_listing(columns)}); "
            f"set data.text_column to one of them"
        )
    if cfg.id_column is not None and cfg.id_column not in have:
        raise LmError(
            f"{label}: no id column {cfg.id_column!r} (columns: {_listing(columns)}); "
            f"set data.id_column to one of them, or to null to number the rows"
        )
    target = cfg.target_column if cfg.target_column in have else None
    if target is None and task == "classify":
        if cfg.target_column is None:
            raise LmError(f"{label}: task=classify needs a target column; set data.target_column")
        raise LmError(
            f"{label}: no target column {cfg.target_column!r} for task=classify "
            f"(columns: {_listing(columns)}); set data.target_column, or use task mlm/clm"
        )
    present, missing = cfg.identities_in(have)
    return target, present, missing


def _listing(columns: list[str]) -> str:
    shown = ", ".join(columns[:_MAX_LISTED])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > _MAX_LISTED else "")


def _select(cfg: DataConfig, target: str | None, identities: list[str]) -> list[str]:
    cols = [cfg.text_column, target, cfg.id_column, *identities]
    return list(dict.fromkeys(c for c in cols if c is not None))  # unique, in order


def _wanted_names(cfg: DataConfig) -> set[str]:
    return {
        c
        for c in (cfg.text_column, cfg.target_column, cfg.id_column, *cfg.asked_identities())
        if c is not None
    }


def _read_local(source: str, cfg: DataConfig, task: str) -> _Raw:
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise LmError(
            f"data.source {source!r}: unknown extension {suffix or '(none)'!r}; use 'embedded', "
            f"'hf:<dataset>', or a file ending in {', '.join(EXTENSIONS)}"
        )
    if not path.is_file():
        raise LmError(
            f"data.source: file not found: {path} (check the path in params.yaml; a relative path is "
            f"read from the repository root, {repository_root()})"
        )
    kind = EXTENSIONS[suffix]
    details: dict[str, Any] = {"bytes": path.stat().st_size}
    if kind in ("txt", "csv", "jsonl"):
        details["encoding"] = text_encoding(path, cfg.encoding)
    return read_file(path, kind, cfg, task, details)


def read_file(path: Path, kind: str, cfg: DataConfig, task: str, details: dict[str, Any]) -> _Raw:
    """A local data file of `kind` (csv, parquet, jsonl, txt) opened for chunked reading."""
    label = str(path)
    encoding = details.get("encoding", "utf-8")
    if kind == "txt":
        if task == "classify":
            raise LmError(
                f"{label}: a .txt source has no target column, and task=classify needs one; use a "
                f".csv/.parquet/.jsonl with data.target_column, or task mlm/clm"
            )
        details["documents"] = rule = _txt_rule(path, encoding)
        chunks = (
            pd.DataFrame({"text": docs}) for docs in _batched(_read_txt(path, cfg.max_rows, encoding, rule))
        )
        return _Raw(chunks, label, kind, "text", None, None, [], cfg.identities_in([])[1], details=details)
    if kind == "csv":
        columns = _csv_columns(path, encoding)
        target, present, missing = _needed(columns, cfg, task, label)
        chunks = _read_csv(path, _select(cfg, target, present), cfg.max_rows, encoding)
    elif kind == "parquet":
        columns = _parquet_columns(path)
        target, present, missing = _needed(columns, cfg, task, label)
        chunks = _read_parquet(path, _select(cfg, target, present), cfg.max_rows)
    else:
        columns, records = _jsonl_columns(path, cfg.max_rows, encoding, _wanted_names(cfg))
        target, present, missing = _needed(columns, cfg, task, label)
        wanted = _select(cfg, target, present)
        chunks = (
            pd.DataFrame({c: [rec.get(c) for rec in batch] for c in wanted}, dtype=object)
            for batch in _batched(records())
        )
    return _Raw(
        chunks, label, kind, cfg.text_column, target, cfg.id_column, present, missing, details=details
    )


def _batched(items: Iterable[Any], size: int = READ_ROWS) -> Iterator[list[Any]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _txt_rule(path: Path, encoding: str) -> str:
    """'paragraphs' when the file has a blank line, else 'lines' (one pass, stopping at the first blank
    line)."""
    with _open_text(path, encoding) as fh:
        return "paragraphs" if any(not line.strip() for line in fh) else "lines"


def _read_txt(path: Path, max_rows: int | None, encoding: str, rule: str) -> Iterator[str]:
    """Documents are blank-line-separated paragraphs; a file without any blank line is one document per line
    (a list of sentences or posts, never one giant document). Streams: reads only as far as max_rows needs."""
    by_line = rule == "lines"
    n = 0
    para: list[str] = []
    with _open_text(path, encoding) as fh:
        for line in fh:
            if line.strip() and not by_line:
                para.append(line)
                continue
            if by_line:
                yield line.strip("\n")
                n += 1
            elif para:
                yield "".join(para).strip("\n")
                n += 1
                para = []
            if max_rows is not None and n >= max_rows:
                return
    if para:
        yield "".join(para).strip("\n")


def _open_text(path: Path, encoding: str):
    return open(path, encoding=encoding, newline=None)


def _csv_columns(path: Path, encoding: str) -> list[str]:
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0, encoding=encoding).columns]
    except UnicodeDecodeError:
        raise LmError(
            f"{path}: not {encoding} text; set data.encoding to the file's encoding (or auto)"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise LmError(f"{path}: not a readable CSV ({_first_line(err)})") from None


def _read_csv(path: Path, usecols: list[str], max_rows: int | None, encoding: str) -> Iterator[pd.DataFrame]:
    # Everything as strings, and only empty cells are missing: a comment reading "NA" or "null" is text, and
    # numeric columns are parsed afterwards so that a bad cell can be reported by row.
    try:
        with pd.read_csv(
            path,
            usecols=usecols,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            nrows=max_rows,
            encoding=encoding,
            chunksize=READ_ROWS,
        ) as reader:
            for chunk in reader:
                yield chunk[usecols]
    except UnicodeDecodeError:
        raise LmError(
            f"{path}: not {encoding} text; set data.encoding to the file's encoding (or auto)"
        ) from None
    except (pd.errors.ParserError, ValueError) as err:
        raise LmError(f"{path}: not a readable CSV ({_first_line(err)})") from None


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError variants for non-parquet files
        raise LmError(f"{path}: not a readable Parquet file ({_first_line(err)})") from None


def _read_parquet(path: Path, columns: list[str], max_rows: int | None) -> Iterator[pd.DataFrame]:
    """Record batches of READ_ROWS rows (one row group decoded at a time), stopping once max_rows are in."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    left = max_rows if max_rows is not None else np.inf
    for batch in pf.iter_batches(batch_size=READ_ROWS, columns=columns):
        if batch.num_rows > left:
            batch = batch.slice(0, int(left))
        left -= batch.num_rows
        yield batch.to_pandas()[columns]
        if left <= 0:
            return


def _jsonl_columns(
    path: Path, max_rows: int | None, encoding: str, wanted: set[str]
) -> tuple[list[str], Callable[[], Iterator[dict[str, Any]]]]:
    """The keys of a JSON lines file in order of first appearance (read until every wanted key is seen, or to
    the end), and a function that streams its records. A .json array is read whole (use JSON lines for big
    files)."""
    records = _read_jsonl(path, max_rows, encoding)
    if isinstance(records, list):
        columns = list(dict.fromkeys(k for rec in records for k in rec))
        return columns, lambda: iter(records)
    seen: dict[str, None] = {}
    for rec in records:
        seen.update(dict.fromkeys(rec))
        if wanted <= seen.keys():
            break
    return list(seen), lambda: _read_jsonl(path, max_rows, encoding)  # type: ignore[return-value]


def _read_jsonl(
    path: Path, max_rows: int | None, encoding: str = "utf-8"
) -> list[dict[str, Any]] | Iterator[dict[str, Any]]:
    """JSON lines (one object per line, blank lines skipped; streamed), or a .json file holding an array of
    objects (a list)."""
    with _open_text(path, encoding) as fh:
        head = fh.read(1)
        while head and head.isspace():
            head = fh.read(1)
        fh.seek(0)
        if head == "[":
            try:
                records = json.load(fh)
            except json.JSONDecodeError as err:
                raise LmError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
            records = records[:max_rows] if max_rows is not None else records
            bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
            if bad is not None:
                raise LmError(
                    f"{path}: item {bad} of the JSON array is not an object; expected one object per row"
                )
            return records
    return _jsonl_lines(path, max_rows, encoding)


def _jsonl_lines(path: Path, max_rows: int | None, encoding: str) -> Iterator[dict[str, Any]]:
    n = 0
    with _open_text(path, encoding) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise LmError(
                    f"{path}: line {lineno} is not valid JSON ({err.msg}); expected one object per "
                    f"line (JSON lines)"
                ) from None
            if not isinstance(rec, dict):
                raise LmError(f"{path}: line {lineno} is not a JSON object; expected one object per line")
            yield rec
            n += 1
            if max_rows is not None and n >= max_rows:
                return


def _parse_hf(spec: str) -> tuple[str, str | None]:
    """'id', 'id:config', a local directory, or 'dir:config' -> (path or id, config or None)."""
    spec = spec.strip()
    if not spec:
        raise LmError(
            "data.source 'hf:' names no dataset; use 'hf:<dataset id>' or 'hf:<dataset id>:<config>'"
        )
    if Path(spec).expanduser().exists():
        return str(Path(spec).expanduser()), None
    ref, config = spec, None
    if ":" in spec:
        left, right = spec.rsplit(":", 1)
        if Path(left).expanduser().exists() or ":" not in left:
            ref, config = left, right or None
    if Path(ref).expanduser().exists():
        return str(Path(ref).expanduser()), config
    if ref.startswith(("/", "./", "../", "~")):  # clearly a path: never fall through to a hub lookup
        raise LmError(
            f"data.source hf:{spec}: directory not found: {ref} (check the path, or use a hub id "
            f"like 'hf:owner/name')"
        )
    return ref, config


def _is_saved_to_disk(ref: str) -> bool:
    p = Path(ref)
    return p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file())


def _read_hf(spec: str, cfg: DataConfig, task: str) -> _Raw:
    """A Hugging Face dataset: hub id (optionally ':config'), or a local directory (save_to_disk or data
    files).

    Streamed (`datasets` streaming mode: rows arrive as they are read, nothing is stored) when
    data.hf_streaming is true, or when it is null and data.max_rows is set, so a multi-terabyte corpus costs
    what you read; otherwise `datasets` prepares its Arrow cache and the rows are read from it in batches.
    With data.cache_dir set, a hub dataset's data files are fetched into that cache instead
    (lm.data.hub_cache, least recently used evicted beyond data.cache_max_gb) and read file by file.
    """
    import datasets

    ref, config = _parse_hf(spec)
    label = f"data.source hf:{spec}"
    streaming = cfg.hf_streaming if cfg.hf_streaming is not None else cfg.max_rows is not None
    if cfg.cache_dir is not None and not Path(ref).exists():
        return _read_hub_cached(ref, config, cfg, task, label)
    try:
        if _is_saved_to_disk(ref):
            ds = datasets.load_from_disk(ref)
            if isinstance(ds, datasets.DatasetDict):
                if cfg.hf_split not in ds:
                    raise LmError(
                        f"{label}: no split {cfg.hf_split!r} (splits: {', '.join(ds)}); set data.hf_split"
                    )
                ds = ds[cfg.hf_split]
            if streaming:
                ds = ds.to_iterable_dataset()
        else:
            pinned = {"revision": cfg.hf_revision} if cfg.hf_revision else {}
            ds = datasets.load_dataset(ref, config, split=cfg.hf_split, streaming=streaming, **pinned)
    except LmError:
        raise
    except Exception as err:  # datasets raises many types (hub, config, split, file errors): one line for all
        raise LmError(
            f"{label}: could not load the dataset ({type(err).__name__}: {_first_line(err)}); check "
            f"the id, data.hf_split and the ':config' suffix, or point at a local path"
        ) from None
    details = {
        "dataset": ref,
        "config": config,
        "split": cfg.hf_split,
        "streaming": streaming,
        "revision": cfg.hf_revision,
    }

    if isinstance(ds, datasets.IterableDataset):
        rows = _guard(iter(ds), label)
        first = next(rows, None)
        if first is None:
            raise LmError(f"{label}: the {cfg.hf_split!r} split has no rows; check data.hf_split")
        target, present, missing = _needed(list(first), cfg, task, label)
        wanted = _select(cfg, target, present)
        chunks = (
            pd.DataFrame({c: [row.get(c) for row in batch] for c in wanted}, dtype=object)
            for batch in _batched(islice(chain([first], rows), cfg.max_rows))
        )
    else:
        target, present, missing = _needed(list(ds.column_names), cfg, task, label)
        wanted = _select(cfg, target, present)
        table = ds.select_columns(wanted)
        if cfg.max_rows is not None and cfg.max_rows < len(table):
            table = table.select(range(cfg.max_rows))
        chunks = (
            batch.to_pandas()[wanted] for batch in table.with_format("arrow").iter(batch_size=READ_ROWS)
        )
    return _Raw(
        chunks, label, "hf", cfg.text_column, target, cfg.id_column, present, missing, details=details
    )


def _read_hub_cached(ref: str, config: str | None, cfg: DataConfig, task: str, label: str) -> _Raw:
    """A hub dataset read data file by data file through the local shard cache (lm.data.hub_cache)."""
    from lm.data import hub_cache

    try:
        files = hub_cache.data_files(ref, config, cfg.hf_split, cfg.hf_revision)
    except LmError:
        raise
    except Exception as err:
        raise LmError(
            f"{label}: could not list the dataset's data files ({type(err).__name__}: "
            f"{_first_line(err)}); check the id, data.hf_split and the ':config' suffix"
        ) from None
    kinds = {name: EXTENSIONS.get(Path(name).suffix.lower()) for name in files}
    unreadable = [name for name, kind in kinds.items() if kind not in ("parquet", "jsonl", "csv")]
    if not files or unreadable:
        raise LmError(
            f"{label}: data.cache_dir reads parquet/jsonl/csv data files, and split {cfg.hf_split!r} has "
            f"{unreadable[0] if unreadable else 'none'}; set data.cache_dir: null to read it through "
            f"`datasets`"
        )
    cache = hub_cache.ShardCache(Path(cfg.cache_dir).expanduser(), int(cfg.cache_max_gb * 1e9))
    repo_dir = hub_cache.cache_key(ref, cfg.hf_revision)
    first = cache.get(
        f"{repo_dir}/{files[0]}", lambda dest: hub_cache.fetch(ref, files[0], cfg.hf_revision, dest)
    )
    head = read_file(first, kinds[files[0]], cfg, task, {})
    details = {
        "dataset": ref,
        "config": config,
        "split": cfg.hf_split,
        "streaming": True,
        "revision": cfg.hf_revision,
        "cache_dir": str(cfg.cache_dir),
        "data_files": len(files),
    }

    def chunks() -> Iterator[pd.DataFrame]:
        left = cfg.max_rows if cfg.max_rows is not None else np.inf
        for k, name in enumerate(files):
            if k == 0:
                raw = head
            else:
                path = cache.get(
                    f"{repo_dir}/{name}",
                    lambda dest, name=name: hub_cache.fetch(ref, name, cfg.hf_revision, dest),
                )
                capped = cfg if cfg.max_rows is None else cfg.model_copy(update={"max_rows": int(left)})
                raw = read_file(path, kinds[name], capped, task, {})
            for chunk in raw.chunks:
                needed = [
                    c for c in (cfg.text_column, head.target, cfg.id_column) if c and c not in chunk.columns
                ]
                if needed:
                    raise LmError(
                        f"{label}: data file {name} has no column {needed[0]!r} (the first file has it); "
                        f"pick a split whose files share their columns"
                    )
                unannotated = [c for c in head.identities if c not in chunk.columns]
                if unannotated:  # a later file without an identity column: its rows are unannotated there
                    chunk = chunk.assign(**{c: np.nan for c in unannotated})
                yield chunk
                left -= len(chunk)
                if left <= 0:
                    return

    return _Raw(
        chunks(),
        label,
        "hf",
        cfg.text_column,
        head.target,
        cfg.id_column,
        head.identities,
        head.missing_identities,
        details=details,
    )


def _guard(rows: Iterator[Any], label: str) -> Iterator[Any]:
    """A streamed dataset's rows, with a failure while reading (network, a bad file) as one LmError line."""
    try:
        yield from rows
    except Exception as err:
        raise LmError(
            f"{label}: reading the stream failed ({type(err).__name__}: {_first_line(err)})"
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


# ----------------------------------------------------------------------------------------------------------
# Mapping and validation: one path for every source, one chunk at a time.
# ----------------------------------------------------------------------------------------------------------


class CorpusStream:
    """The canonical corpus of an opened source, one mapped and validated chunk per iteration step (empty
    texts dropped); `stats()` once it has been iterated. Memory: one chunk, plus 8 bytes per row for the
    duplicate-id check when data.id_column is set."""

    def __init__(self, raw: _Raw, cfg: DataConfig, task: str):
        self.raw, self.cfg, self.task = raw, cfg, task
        self.identity_columns = list(raw.identities)
        self._n_read = self._n_kept = self._n_positive = self._n_annotated = self._n_chars = 0
        self._target_sum, self._target_n = 0.0, 0
        self._seen = _SeenIds()
        self._done = False

    def __iter__(self) -> Iterator[pd.DataFrame]:
        for chunk in self.raw.chunks:
            yield self._map(chunk.reset_index(drop=True))
        if self._n_kept == 0:
            raise LmError(
                f"{self.raw.label}: the corpus is empty: no non-empty text in column {self.raw.text!r} "
                f"({self._n_read} rows read); check data.text_column and the source"
            )
        self._done = True

    def _map(self, frame: pd.DataFrame) -> pd.DataFrame:
        raw, cfg = self.raw, self.cfg
        n_read = len(frame)
        row_no = self._n_read + np.arange(
            n_read
        )  # source row numbers, kept through the drop for ids and messages
        self._n_read += n_read

        text_col = frame[raw.text]
        missing_text = text_col.isna().to_numpy()
        texts = np.array(
            [("" if m else (t if isinstance(t, str) else str(t))) for t, m in zip(text_col, missing_text)],
            dtype=object,
        )
        keep = np.fromiter((bool(t.strip()) for t in texts), dtype=bool, count=n_read)
        n_kept = int(keep.sum())
        frame = frame.loc[keep].reset_index(drop=True)
        row_no = row_no[keep]

        if raw.id is not None:
            ids_col = frame[raw.id]
            if ids_col.isna().any():
                i = int(np.flatnonzero(ids_col.isna().to_numpy())[0])
                raise LmError(
                    f"{raw.label}: id column {raw.id!r} is empty at row {row_no[i]}; fill it or set "
                    f"data.id_column to null to number the rows"
                )
            ids = [_id_text(v) for v in ids_col]
            dup = self._seen.first_duplicate(ids)
            if dup is not None:
                raise LmError(
                    f"{raw.label}: id column {raw.id!r} has duplicate value {dup!r}; ids must be unique "
                    f"(or set data.id_column to null to number the rows)"
                )
        else:
            ids = [str(i) for i in row_no]
        where = _Where(raw.label, row_no, ids if raw.id is not None else None)

        if raw.target is not None:
            target = _numeric(frame[raw.target], raw.target, where)
            if self.task == "classify" and np.isnan(target).any():
                i = int(np.flatnonzero(np.isnan(target))[0])
                raise LmError(
                    f"{raw.label}: target column {raw.target!r} is empty at {where.row(i)}; task=classify "
                    f"needs a target on every row (fill it, or drop the row)"
                )
            _check_unit(
                target,
                f"target column {raw.target!r}",
                where,
                "scale it to [0, 1] (a fraction of annotators or a probability)",
            )
            self._n_positive += int((target >= cfg.threshold).sum())
            self._target_sum += float(np.nansum(target))
            self._target_n += int((~np.isnan(target)).sum())
        else:
            target = np.full(n_kept, np.nan, dtype=np.float64)

        out: dict[str, Any] = {"id": ids, "text": list(texts[keep]), "target": target}
        for col in raw.identities:
            vals = _numeric(frame[col], col, where, kind="identity column")
            _check_unit(
                vals, f"identity column {col!r}", where, "identity values must be fractions in [0, 1]"
            )
            out[col] = vals
        df = pd.DataFrame(out)
        if raw.identities:
            self._n_annotated += int(
                (~np.isnan(df[raw.identities].to_numpy(dtype=np.float64))).any(axis=1).sum()
            )
        self._n_kept += n_kept
        self._n_chars += int(sum(len(t) for t in out["text"]))
        return df

    def stats(self) -> CorpusStats:
        if not self._done:
            raise RuntimeError("CorpusStream.stats() before the stream was read to its end")
        raw, cfg = self.raw, self.cfg
        has_target = raw.target is not None
        return CorpusStats(
            source=cfg.source,
            kind=raw.kind,
            task=self.task,
            n_read=self._n_read,
            n_kept=self._n_kept,
            n_dropped_empty=self._n_read - self._n_kept,
            identity_columns=list(raw.identities),
            synthetic=raw.synthetic,
            text_column=raw.text,
            target_column=raw.target,
            id_column=raw.id if raw.kind != "embedded" else None,
            max_rows=cfg.max_rows,
            threshold=cfg.threshold,
            n_positive=self._n_positive if has_target else None,
            positive_rate=(self._n_positive / self._n_kept) if has_target else None,
            target_mean=(self._target_sum / self._target_n) if has_target and self._target_n else None,
            identity_columns_missing=list(raw.missing_identities),
            n_identity_annotated=self._n_annotated,
            n_chars=self._n_chars,
            details=dict(raw.details),
        )


class _SeenIds:
    """The ids met so far as 64-bit hashes in sorted runs whose sizes double (a log-structured merge): finding
    a duplicate costs O(log n) per id and 8 bytes per id, not a Python set of every id string."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def first_duplicate(self, ids: list[str]) -> str | None:
        if not ids:
            return None
        series = pd.Series(ids, dtype=object)
        inner = series.duplicated()
        hashes = pd.util.hash_array(series.to_numpy()).astype(np.uint64)
        earlier = np.zeros(len(ids), dtype=bool)
        for run in self.runs:
            pos = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            earlier |= run[pos] == hashes
        bad = np.flatnonzero(earlier | inner.to_numpy())
        if len(bad):
            return ids[int(bad[0])]
        new = np.sort(hashes)
        while self.runs and len(self.runs[-1]) <= len(new):
            new = np.sort(np.concatenate([self.runs.pop(), new]))
        self.runs.append(new)
        return None


@dataclass
class _Where:
    """Names a row in messages by its source row number, plus its id when the source has an id column."""

    label: str
    row_no: np.ndarray
    ids: list[str] | None

    def row(self, i: int) -> str:
        return f"row {self.row_no[i]}" + (f" (id {self.ids[i]})" if self.ids is not None else "")


def _id_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # an integer id column that pandas widened to float
    return str(v)


def _numeric(col: pd.Series, name: str, where: _Where, kind: str = "target column") -> np.ndarray:
    """Float64 values of a column; empty cells -> NaN; anything else non-numeric -> LmError naming the row."""
    if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    values = col.astype(object).to_numpy()
    try:  # fast path; cells it cannot parse come out NaN and are looked at one by one below
        out = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(
            np.float64, na_value=np.nan
        )
    except (TypeError, ValueError):  # e.g. JSON lists or objects in the column
        out = np.full(len(values), np.nan, dtype=np.float64)
    for i in np.flatnonzero(np.isnan(out)):  # empty cells, unusual spellings, or bad values
        v = values[i]
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            continue
        if isinstance(v, (bool, int, float, np.integer, np.floating)):
            out[i] = float(v)
            continue
        s = str(v).strip()
        if not s:
            continue
        try:
            out[i] = float(s)
        except ValueError:
            raise LmError(
                f"{where.label}: {kind} {name!r} is not numeric at {where.row(i)}: {_short(v)}; "
                f"it must hold numbers in [0, 1]"
            ) from None
    return out


def _check_unit(values: np.ndarray, what: str, where: _Where, fix: str) -> None:
    bad = ~np.isnan(values) & ((values < 0.0) | (values > 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LmError(f"{where.label}: {what} is outside [0, 1] at {where.row(i)}: {values[i]:g}; {fix}")


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
