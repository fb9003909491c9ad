"""The `lm` command: one subcommand per pipeline stage, plus generate, predict and bench.

Only typer is imported at module level so `lm --help` answers instantly; each command imports its stage
module (and with it torch, pandas, ...) when it runs. Every failure the user can fix is printed as one line
on stderr with a non-zero exit code: 2 for a bad params file, 1 for bad input data or a missing prerequisite.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="lm",
    help=(
        "Train, compare and inspect small transformers from scratch (a DVC pipeline, one command per stage)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params file to validate and use")]
DEFAULT_PARAMS = Path("params.yaml")


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _run(fn: Callable[[], object]) -> None:
    """Run a command body, turning known user errors into one line and an exit code."""
    from lm.config import ConfigError
    from lm.errors import LmError

    try:
        fn()
    except ConfigError as err:
        _fail(str(err), 2)
    except LmError as err:
        _fail(str(err), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _params(path: Path):
    from lm.config import load_params

    return load_params(path)


def _stage(name: str, params: Path, **options: object) -> None:
    """The body of every stage command: import stages/<name>.py, validate the params file, run the stage."""

    def body() -> None:
        stage = importlib.import_module(f"stages.{name}")
        stage.run(_params(params), **options)

    _run(body)


@app.command()
def download(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Read the corpus (embedded generator, Hugging Face dataset or local file) into data/raw/."""
    _stage("download", params)


@app.command()
def tokenize(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Train the byte-level BPE tokenizer on data/raw/ (or adopt tokenizer.pretrained) and write
    data/tokenizer/."""
    _stage("tokenize", params)


@app.command()
def encode(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Encode data/raw/ with data/tokenizer/ into memmap arrays under data/encoded/."""
    _stage("encode", params)


@app.command()
def split(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Split the encoded rows into train/val/test (stratified for classify) under data/split/."""
    _stage("split", params)


@app.command()
def pretrain(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Pretrain the trunk on unlabelled text (pretrain.source) into pretrained/; a no-op when it is unset."""
    _stage("pretrain", params)


@app.command()
def train(
    params: ParamsOption = DEFAULT_PARAMS,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="insist on continuing the interrupted run "
            "(.lm/staging/models/checkpoint.pt, same params and data); without it a "
            "matching staged checkpoint is resumed, anything else starts afresh",
        ),
    ] = False,
    node_rank: Annotated[
        int | None,
        typer.Option(
            "--node-rank",
            min=0,
            help="this machine's train.node_rank (when every machine reads the same params file)",
        ),
    ] = None,
) -> None:
    """Train the model (DDP through torchrun when train.nproc or train.nnodes > 1; under an external torchrun
    or SLURM step, as the rank it was given) and write models/."""
    _stage("train", params, params_path=params, resume=resume, node_rank=node_rank)


@app.command(name="eval")
def evaluate(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Evaluate the trained model on the test split and write reports/metrics.json and reports/plots/."""
    _stage("evaluate", params)


@app.command()
def viz(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Draw attention maps and prediction tables (or generated samples) under reports/."""
    _stage("visualize", params)


@app.command(name="export")
def export_serving(
    params: ParamsOption = DEFAULT_PARAMS,
    hf: Annotated[
        Path | None,
        typer.Option(
            "--hf",
            help="instead: write a Hugging Face save_pretrained "
            "directory here (config.json, model.safetensors, tokenizer files)",
        ),
    ] = None,
    model_dir: Annotated[
        Path | None, typer.Option("--model", help="exported model directory (default models)")
    ] = None,
) -> None:
    """Export the trained classifier for serving (TorchScript + INT8 under serving/), checked against the
    eager model on the test split in reports/serving.json. With --hf DIR: write the model as a directory that
    transformers' Auto classes load without lm (BERT classifier, GPT-2 or Llama decoder;
    docs/huggingface.md)."""
    if hf is None:
        _stage("export", params, **({"model_dir": model_dir} if model_dir is not None else {}))
        return

    def body() -> None:
        from lm.model.hf_export import export_hf
        from lm.paths import MODELS

        done = export_hf(model_dir if model_dir is not None else MODELS, hf)
        typer.echo(
            f"wrote {done.out_dir} ({done.architecture}: "
            f"transformers.{done.auto_class}.from_pretrained loads it)"
        )

    _run(body)


@app.command()
def generate(
    prompt: Annotated[list[str], typer.Argument(help="one or more prompts")],
    model_dir: Annotated[Path, typer.Option("--model", help="exported model directory")] = Path("models"),
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 50,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.8,
    top_k: Annotated[int | None, typer.Option(min=1)] = 40,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = 0.95,
    seed: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Continue prompts with a trained decoder (task=clm); temperature 0 means greedy."""

    def body() -> None:
        from lm.infer.predict import load_trained

        trained = load_trained(model_dir)
        for text in prompt:
            typer.echo(
                trained.complete(
                    text,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    seed=seed,
                )
            )

    _run(body)


@app.command()
def predict(
    texts: Annotated[list[str] | None, typer.Argument(help="texts to score")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", help="a .txt (one text per line) or .csv/.parquet/.jsonl with the text column"
        ),
    ] = None,
    model_dir: Annotated[Path, typer.Option("--model", help="exported model directory")] = Path("models"),
    text_column: Annotated[str, typer.Option(help="text column of --file tables")] = "text",
    id_column: Annotated[
        str, typer.Option(help="a --file table's key column, copied to the output when present (classify)")
    ] = "id",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write a CSV instead of printing")
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, help="mlm: candidates per <|mask|>")] = 5,
) -> None:
    """Score texts with a trained model: positive-class scores and labels (classify), fills for <|mask|>
    (mlm), or next-token candidates (clm)."""

    def body() -> None:
        from lm.infer.predict import load_trained, read_table

        from_file, keys = read_table(file, text_column, id_column) if file else ([], None)
        items = list(texts or []) + from_file
        if not items:
            from lm.errors import LmError

            raise LmError("nothing to predict: pass texts as arguments or --file PATH")
        trained = load_trained(model_dir)
        table = trained.predict(items, top_k=top_k)
        if keys is not None and trained.task == "classify":  # one output row per input row: keep its key
            table.insert(0, id_column, [""] * len(texts or []) + keys)
        if output:
            from lm.io import atomic_write_text

            atomic_write_text(output, table.to_csv(index=False))
            typer.echo(f"wrote {len(table)} rows to {output}")
        else:
            typer.echo(table.to_string(index=False, max_colwidth=60))

    _run(body)


@app.command()
def bench(
    params: ParamsOption = DEFAULT_PARAMS,
    steps: Annotated[int, typer.Option(min=1, help="timed training steps")] = 10,
) -> None:
    """Measure training throughput (tokens/s) of the configured model on random tokens."""

    def body() -> None:
        from lm.train.bench import run_bench

        typer.echo(run_bench(_params(params), steps=steps))

    _run(body)


@app.command()
def compare(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="only these runs: experiment names, `workspace`, a branch or a commit sha"),
    ] = None,
    num: Annotated[
        int, typer.Option("--num", "-n", min=1, help="the last N commits and their experiments")
    ] = 1,
    all_commits: Annotated[
        bool, typer.Option("--all-commits", "-A", help="every commit and its experiments")
    ] = False,
    keys: Annotated[
        str | None,
        typer.Option(
            "--keys",
            help="param columns, comma-separated dotted keys "
            "(default: the params that differ, as many as fit)",
        ),
    ] = None,
    per_run: Annotated[
        bool, typer.Option("--per-run", help="one row per run (no mean±std over seed sweeps)")
    ] = False,
    md: Annotated[Path | None, typer.Option("--md", help="also write the table as markdown here")] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html", help="also write one offline HTML page here: the table, ROC / PR and loss curves"
        ),
    ] = None,
) -> None:
    """Compare the DVC experiments of this repository in one table: the workspace, HEAD and its `dvc exp`
    experiments; the params that differ, headline metrics beside the baseline's, training cost. Runs that
    differ only in seed are one row with mean±std."""

    def body() -> None:
        import shutil

        from lm.compare.command import compare as run_compare
        from lm.compare.table import WIDTH

        width = min(WIDTH, shutil.get_terminal_size().columns) if sys.stdout.isatty() else WIDTH
        typer.echo(
            run_compare(
                names,
                all_commits=all_commits,
                num=num,
                aggregate=not per_run,
                md=md,
                html=html,
                keys=[k.strip() for k in keys.split(",") if k.strip()] if keys else None,
                width=width,
            ),
            nl=False,
        )

    _run(body)


@app.command()
def serve(
    params: ParamsOption = DEFAULT_PARAMS,
    host: Annotated[str | None, typer.Option(help="interface (default serve.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default serve.port)")] = None,
    backend: Annotated[
        str | None, typer.Option(help="eager | onnx | onnx-int8 (default serve.backend)")
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="texts per forward pass (default serve.max_batch)")
    ] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option(help="batching wait (default serve.max_wait_ms)")
    ] = None,
    model_dir: Annotated[
        Path | None, typer.Option("--model", help="model directory (default serve.model_dir)")
    ] = None,
    export_dir: Annotated[
        Path | None, typer.Option(help="`lm export` artifacts (default serve.export_dir)")
    ] = None,
    naive: Annotated[
        bool, typer.Option("--naive", help="no batching: one request scored at a time (a baseline)")
    ] = False,
) -> None:
    """Serve the trained model over HTTP (uvicorn): POST /v1/score (classify), /v1/generate (clm),
    /v1/fill (mlm); GET /healthz, /readyz, /metrics."""

    def body() -> None:
        import uvicorn
        from pydantic import ValidationError

        from lm.config import ConfigError, ServeConfig
        from lm.errors import LmError, first_problem
        from lm.serving.app import create_app, sampling_defaults

        given = {
            "host": host,
            "port": port,
            "backend": backend,
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
            "model_dir": str(model_dir) if model_dir else None,
            "export_dir": str(export_dir) if export_dir else None,
        }
        try:
            cfg = ServeConfig.model_validate(
                {**_params(params).serve.model_dump(), **{k: v for k, v in given.items() if v is not None}}
            )
        except ValidationError as err:
            key, msg = first_problem(err)
            raise ConfigError(f"serve.{key}: {msg}") from None
        if not (Path(cfg.model_dir) / "config.json").exists():
            raise LmError(
                f"{cfg.model_dir}/config.json not found: "
                "train a model first (`dvc repro`) or pass --model DIR"
            )
        from lm.serving.backends import artifact_path, check_device

        check_device(cfg.device)
        if cfg.backend != "eager":
            artifact_path(cfg.backend, Path(cfg.export_dir))
        uvicorn.run(
            create_app(cfg, naive=naive, defaults=sampling_defaults(_params(params))),
            host=cfg.host,
            port=cfg.port,
            access_log=False,
            timeout_graceful_shutdown=30,
        )

    _run(body)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
