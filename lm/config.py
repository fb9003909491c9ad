"""Typed configuration for every section of params.yaml.

params.yaml is validated once, at the edge (the CLI), into these pydantic models; the library receives the
models, not raw dicts (`model.attention_options` reaches the model as its kind's typed options, declared in
lm.attention_kinds). Unknown keys, wrong types and impossible combinations are rejected here with the
offending key named, so a bad experiment fails in a second instead of an hour into training. Validating
imports no torch and no model code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from lm.attention_kinds import KINDS, AttentionKind, resolve_attention_options, set_options
from lm.errors import LmError, first_problem, host_port
from lm.labels import auto_label_names
from lm.special_tokens import SPECIAL_TOKENS

Task = Literal["classify", "mlm", "clm"]
# train.lr: auto. Classify: 1e-3 beat 2e-3 and 7e-4 on Davidson (docs/results.md); the language models
# were tuned at 2e-3
AUTO_LR = {"classify": 1e-3, "mlm": 2e-3, "clm": 2e-3}
TASKS: tuple[str, ...] = get_args(Task)
ATTENTION_KINDS: tuple[str, ...] = tuple(KINDS)  # declared in lm.attention_kinds with their options

DEFAULT_IDENTITIES = [
    "male",
    "female",
    "homosexual_gay_or_lesbian",
    "christian",
    "jewish",
    "muslim",
    "black",
    "white",
    "psychiatric_or_mental_illness",
]


class ConfigError(ValueError):
    """A params.yaml problem, already phrased as one line for the user."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """Where the corpus comes from and which columns mean what."""

    source: str = Field(
        "embedded", description="'embedded', 'hf:<id>[:<config>]', or a .csv/.parquet/.jsonl/.txt path"
    )
    n_rows: int = Field(
        12000, ge=10, description="rows the embedded generator writes (data.source: embedded)"
    )
    max_rows: int | None = Field(
        None, ge=1, description="cap on rows read from a real source (streams hf sources)"
    )
    hf_split: str = Field("train", description="split of a Hugging Face dataset")
    hf_revision: str | None = Field(
        None,
        description="hub dataset revision (commit, tag or branch); null: the "
        "current one, recorded in data/raw/manifest.json",
    )
    text_column: str = Field("text", description="the column holding the text")
    target_column: str | None = Field(
        "target",
        description="score in [0,1] (e.g. the share of annotators who "
        "judged the text toxic); needed for task=classify",
    )
    label_names: Literal["auto"] | list[str] = Field(
        "auto",
        description="classify: the [negative, positive] class names that predict, serve and the reports "
        "print; auto: non-toxic / toxic for the embedded corpus, negative / positive otherwise",
    )

    @field_validator("label_names")
    @classmethod
    def _two_names(cls, value: Any) -> Any:
        if value != "auto" and (
            len(value) != 2 or len(set(value)) != 2 or not all(str(v).strip() for v in value)
        ):
            raise ValueError(
                "must be auto or two different names, [negative, positive], e.g. [fresh, rotten]"
            )
        return value

    identity_columns: Literal["auto"] | list[str] = Field(
        "auto",
        description="columns of identity annotations in [0, 1] for the bias metrics; auto: those of the "
        "Jigsaw identity names the source has (none for most data sets)",
    )
    id_column: str | None = Field(
        None, description="a column of row ids kept in the outputs; null: the row number"
    )
    threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="target >= threshold is the positive class (e.g. toxic)"
    )

    def asked_identities(self) -> list[str]:
        """The identity columns to look for: the named ones, or (auto) every Jigsaw identity name."""
        return list(DEFAULT_IDENTITIES) if self.identity_columns == "auto" else list(self.identity_columns)

    def identities_in(self, columns: Iterable[str]) -> tuple[list[str], list[str]]:
        """(asked identity columns present in `columns`, named ones absent); auto never reports one absent."""
        have = set(columns)
        asked = self.asked_identities()
        missing = [] if self.identity_columns == "auto" else [c for c in asked if c not in have]
        return [c for c in asked if c in have], missing

    encoding: str = Field(
        "auto",
        description="text encoding of a .csv/.jsonl/.txt source; auto: UTF-8, else cp1252, "
        "else latin-1 (the download stage says which it used)",
    )
    shard_mb: float = Field(
        8,
        gt=0.0,
        description="MB of text per shard (Parquet row group) of data/raw/corpus.parquet: "
        "download writes a shard as soon as it is full, readers hold one shard at a time, so every data "
        "stage needs memory for about one shard",
    )
    hf_streaming: bool | None = Field(
        None,
        description="read an hf: source in datasets' streaming mode (nothing "
        "stored); null: stream when data.max_rows is set",
    )
    cache_dir: str | None = Field(
        None,
        description="cache a hub dataset's data files here, e.g. ~/.cache/lm-shards (read file by file, "
        "least recently used evicted); null: no cache",
    )
    cache_max_gb: float = Field(
        20, gt=0.0, description="most GB data.cache_dir may hold; the least recently used files go first"
    )


class TokenizerConfig(Section):
    """Byte-level BPE trained by lm's own trainer, or a pretrained tokenizer adopted as it is."""

    pretrained: str | None = Field(
        None,
        description="adopt this tokenizer instead of training one: a Hugging Face "
        "tokenizer directory or tokenizer.json, a .tiktoken file, or a tiktoken encoding "
        "name (p50k_base, cl100k_base); null: train lm's BPE (the keys below)",
    )
    vocab_size: int = Field(
        8192,
        ge=260,
        le=200_000,
        description="tokens in the trained vocabulary; real text needs room for its words (2048 splits "
        "most of them into pieces)",
    )
    special_tokens: list[str] = Field(
        default_factory=lambda: list(SPECIAL_TOKENS),
        description="added after the byte-level merges; must include the four lm uses",
    )
    max_train_bytes: int | None = Field(
        None,
        ge=1,
        description="train on a sample of at most this many bytes, the same leading share of every shard; "
        "null: the whole corpus",
    )
    max_words: int | None = Field(
        200_000,
        ge=1000,
        description="distinct words counted at once; beyond it the "
        "rarest are dropped (bounded memory; frequent words keep exact counts); null: all",
    )
    workers: int = Field(1, ge=1, description="processes that count words for BPE training")

    @model_validator(mode="after")
    def _specials(self) -> TokenizerConfig:
        missing = set(SPECIAL_TOKENS) - set(self.special_tokens)
        if missing:
            raise ValueError(f"tokenizer.special_tokens must include {sorted(missing)}")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError("tokenizer.special_tokens has duplicates")
        if self.vocab_size < 256 + len(self.special_tokens):
            raise ValueError("tokenizer.vocab_size must exceed 256 + the number of special tokens")
        return self


class EncodeConfig(Section):
    """Text to token ids: one row per document for classify, packed windows for mlm and clm."""

    max_len: int = Field(
        64, ge=4, le=8192, description="tokens per row (classify) or per packed training window (mlm, clm)"
    )
    batch_size: int = Field(1024, ge=1, description="texts per encode batch")
    mode: Literal["memmap", "on_the_fly"] = Field(
        "memmap",
        description="memmap: tokens written once to data/encoded; on_the_fly: encode writes only the index "
        "(lengths / offsets) and batches tokenize their documents from data/raw when they are built",
    )


class SplitConfig(Section):
    """Train / validation / test rows, drawn from `seed` (stratified by label for classify)."""

    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of rows for validation")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of rows for the test report")

    @model_validator(mode="after")
    def _room_for_training(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("split.val_fraction + split.test_fraction must be < 1 to leave training rows")
        return self


class ModelConfig(Section):
    """The transformer; every part is written from scratch in lm.model."""

    d_model: int = Field(64, ge=8, description="width of the residual stream")
    n_layers: int = Field(2, ge=1, description="transformer blocks")
    n_heads: int = Field(4, ge=1, description="attention heads; must divide d_model")
    d_ff: int = Field(256, ge=8, description="hidden width of the MLP")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on embeddings and residual branches")
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the attention weights")
    attention: AttentionKind = Field("standard", description="one of the 14 kinds of docs/attention.md")
    attention_options: dict[str, Any] = Field(
        default_factory=dict,
        description="the kind's options; params.yaml lists every key, null = the kind's default "
        "(docs/attention.md lists which kinds take which key)",
    )
    positions: Literal["learned", "sinusoidal", "none"] = Field(
        "learned", description="absolute position embeddings (RoPE is an attention option)"
    )
    norm: Literal["layernorm", "rmsnorm"] = Field("layernorm", description="the normalisation layer")
    norm_position: Literal["pre", "post"] = Field(
        "pre", description="norm before each sub-layer (GPT-2) or after the residual sum (BERT)"
    )
    mlp: Literal["gelu", "swiglu"] = Field("gelu", description="the feed-forward block")
    tie_embeddings: bool = Field(True, description="the LM head shares the token embedding matrix")
    pooling: Literal["cls", "mean"] = Field(
        "cls", description="classify: the <|cls|> row, or the mean over the real tokens"
    )
    bias: bool = Field(True, description="biases in every linear layer and LayerNorm (GPT-2: on, Llama: off)")
    norm_eps: float = Field(1e-5, gt=0.0, lt=0.1, description="epsilon of every norm")
    gradient_checkpointing: bool = Field(
        False, description="recompute block activations in backward to save memory"
    )
    embed_norm: bool = Field(
        False, description="a norm right after the embeddings (BERT, RoBERTa, DistilBERT)"
    )
    token_type: bool = Field(
        False,
        description="a trained vector added to every token embedding: BERT's and "
        "RoBERTa's segment-0 token-type embedding, kept as its own weight so fine-tuning "
        "trains it as transformers does",
    )

    @field_validator("attention_options")
    @classmethod
    def _set_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Only the options set (a null means the kind's default), so configs and checkpoints record those."""
        return set_options(options)

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"model.n_heads ({self.n_heads}) must divide model.d_model ({self.d_model})")
        head_dim = self.d_model // self.n_heads
        try:
            attention = resolve_attention_options(self.attention, self.attention_options)
        except LmError as err:
            raise ValueError(str(err)) from None
        if attention.use_rope and head_dim % 2:
            raise ValueError(
                f"model.attention={self.attention} with RoPE needs an even head dim, got {head_dim}"
            )
        return self


class TrainSchedule(Section):
    """Schedule: batches, epochs and the learning rate (linear warmup, then cosine decay to min_lr)."""

    batch_size: int = Field(64, ge=1, description="per-process micro-batch")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    epochs: int = Field(2, ge=1, description="passes over the training rows")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    min_steps: Literal["auto"] | int | None = Field(
        "auto",
        description="run more epochs than train.epochs on a small corpus until at least this many optimizer "
        "steps (auto: 600 for classify, 2000 for clm, 4000 for mlm)",
    )
    lr: Literal["auto"] | float = Field(
        "auto",
        description="peak learning rate of the cosine schedule; auto: 1e-3 for classify (it beat 2e-3 and "
        "7e-4 on Davidson, docs/results.md), 2e-3 for clm and mlm",
    )

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, value: Any) -> Any:
        if value != "auto" and not value > 0:
            raise ValueError("must be 'auto' or a positive number")
        return value

    min_lr: float = Field(2e-4, ge=0.0, description="learning rate at the end of the cosine decay")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay")
    warmup_steps: int | None = Field(
        None, ge=0, description="linear warmup length; null: train.warmup_fraction of the run"
    )
    warmup_fraction: float = Field(
        0.05, ge=0.0, lt=1.0, description="warmup as a share of all optimizer steps"
    )
    grad_clip: float | None = Field(
        1.0, gt=0, description="clip the gradient norm to this; null: no clipping"
    )


class TrainValidation(Section):
    """Validation and checkpoints: which weights are kept, when to stop, where training starts from."""

    eval_every: int = Field(50, ge=1, description="optimizer steps between validation passes")
    log_every: int = Field(
        10,
        ge=1,
        description="optimizer steps between reading the steps' losses and norms from the device (the loop's "
        "one wait for it); every step is logged either way",
    )
    patience: int | None = Field(
        None, ge=1, description="early stop after this many evals without improvement; null: never"
    )
    select_by: Literal["auto", "val_loss", "val_roc_auc"] = Field(
        "auto",
        description="validation metric that picks the exported weights and drives early stopping "
        "(auto: val_roc_auc for classify, val_loss otherwise)",
    )
    checkpoint_every: int | None = Field(
        None, ge=1, description="optimizer steps between checkpoints; null: train.eval_every"
    )
    ema_decay: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="e.g. 0.99: validate and export an exponential moving average of the weights",
    )
    init_from: str | None = Field(
        None,
        description="start from other weights: pretrained (the pretrain stage's output), another lm model "
        "directory, or a local Hugging Face GPT-2 / Llama / BERT / RoBERTa / DistilBERT directory (then its "
        "architecture and the finetune recipe); the trunk loads, the task head is new",
    )


class TrainPlacement(Section):
    """Placement: device, precision, processes and machines (docs/distributed.md)."""

    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="auto: cuda, else mps (one process), else cpu"
    )
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="autocast dtype; fp16 adds a GradScaler")
    compile: bool = Field(False, description="torch.compile the model (the first steps compile)")
    threads: int | None = Field(None, ge=1, description="torch threads per process; null: cores / nproc")
    nproc: int = Field(1, ge=1, description="DDP processes on this machine (torchrun when > 1)")
    nnodes: int = Field(
        1,
        ge=1,
        description="machines in the run; > 1: run `lm train` on each, with its node_rank; torchrun joins "
        "them at train.rdzv_endpoint",
    )
    node_rank: int = Field(
        0, ge=0, description="this machine's number, 0 .. nnodes-1 (machine 0 hosts the rendezvous)"
    )
    rdzv_endpoint: str | None = Field(
        None, description="host:port of machine 0, where the machines meet, e.g. 10.0.0.1:29500 (nnodes > 1)"
    )
    rdzv_backend: Literal["c10d", "static"] = Field(
        "c10d",
        description="c10d: torchrun numbers the machines and restarts failed workers on all of them; "
        "static: global ranks follow node_rank (machine 0 holds rank 0), no restarts",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="process-group backend; auto: nccl on CUDA, else gloo"
    )
    max_restarts: int = Field(
        0,
        ge=0,
        description="torchrun --max-restarts for train.nproc > 1; restarted workers resume from the "
        "checkpoint",
    )


class TrainClassify(Section):
    """Classify only: ignored for clm / mlm (set back to neutral; the train log says so once)."""

    pos_weight: Literal["auto", "off"] | float = Field(
        "auto",
        description="BCE pos_weight; auto: #neg/#pos of the train split when positives are the minority, "
        "else off (off too with soft_labels or sampler: weighted)",
    )

    @field_validator("pos_weight", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 (PyYAML) reads an unquoted `off` as false, and `dvc exp run -S train.pos_weight=off`
        writes it unquoted: false means off."""
        if value is True:
            raise ValueError("use auto, off or a positive number (YAML read `on`/`true` as a boolean)")
        return "off" if value is False else value

    soft_labels: bool = Field(
        True,
        description="BCE against the target score in [0,1] (the annotators' share), not only its 0/1 label",
    )
    sampler: Literal["shuffle", "weighted"] = Field(
        "shuffle",
        description="weighted: draw classes equally, with replacement (pos_weight auto then means off)",
    )
    bucket_by_length: bool = Field(
        False,
        description="each step's batches hold rows of similar length (sorted within chunks of 50 steps, step "
        "order shuffled), so less of every batch is padding: faster steps, a little lower ROC-AUC on real "
        "data (docs/results.md)",
    )
    token_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="share of tokens replaced by <|mask|> in training (word dropout)",
    )
    ensemble: int = Field(
        1,
        ge=1,
        le=16,
        description="train this many models (seeds seed, seed+1, ...) and export the average of their "
        "probabilities (3: +0.005 to +0.01 ROC-AUC on real data, 3x the cost)",
    )


class TrainLanguageModel(Section):
    """Language models only: the settings of clm and mlm, ignored for classify."""

    tokens_per_epoch: int | None = Field(
        None,
        ge=1,
        description="an epoch is a seeded draw of this many tokens of training windows (a different draw "
        "each epoch); null: the whole corpus",
    )
    mask_prob: float = Field(0.15, gt=0.0, lt=1.0, description="mlm: share of the tokens to predict")


# pydantic lists the fields of the last base first: the sections read top to bottom as schedule, validation,
# placement, classify, language model
class TrainConfig(TrainLanguageModel, TrainClassify, TrainPlacement, TrainValidation, TrainSchedule):
    """How `lm train` trains; the params keys stay flat (train.lr, train.nproc, ...)."""


class FinetuneConfig(Section):
    """The training recipe for a Hugging Face checkpoint (train.init_from): pretrained weights want a small
    learning rate, a warmup and a few epochs, and one model (an ensemble of fine-tuned copies costs as many
    fine-tunings). These values replace train's when train.init_from is a Hugging Face directory."""

    lr: float = Field(5e-5, gt=0, description="replaces train.lr")
    min_lr: float = Field(0.0, ge=0.0, description="replaces train.min_lr")
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="replaces train.warmup_fraction")
    epochs: int = Field(3, ge=1, description="replaces train.epochs")
    min_steps: int | None = Field(None, ge=1, description="replaces train.min_steps")
    batch_size: int = Field(32, ge=1, description="replaces train.batch_size")
    weight_decay: float = Field(0.01, ge=0.0, description="replaces train.weight_decay")
    ensemble: int = Field(
        1,
        ge=1,
        le=16,
        description="replaces train.ensemble: one fine-tuned model (more: an ensemble of copies)",
    )
    token_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="replaces train.token_dropout")


class EvalConfig(Section):
    """`lm eval`: the test-split reports and the classical baseline beside them."""

    batch_size: int = Field(128, ge=1, description="rows per forward pass")
    threshold: float | None = Field(
        None, gt=0.0, lt=1.0, description="score threshold (default data.threshold)"
    )
    baseline: bool = Field(
        True,
        description="also fit a classical baseline on the train rows and score the same test rows: TF-IDF + "
        "logistic regression (classify), a Kneser-Ney trigram LM (mlm, clm)",
    )


class VizConfig(Section):
    """`lm viz`: attention maps, the prediction table and generated samples; the sampling defaults of
    `lm generate` and /v1/generate too."""

    n_examples: int = Field(3, ge=0, description="test rows drawn as attention maps")
    prompts: list[str] = Field(
        default_factory=lambda: ["The", "I think that", "This is"], description="clm: prompts to continue"
    )
    max_new_tokens: int = Field(32, ge=1, description="tokens generated per prompt")
    temperature: float = Field(0.8, gt=0.0, description="sampling temperature")
    top_k: int | None = Field(40, ge=1, description="sample among the k likeliest tokens; null: all")
    top_p: float | None = Field(
        0.95, gt=0.0, le=1.0, description="nucleus sampling: the smallest set with this much probability"
    )


class PretrainConfig(Section):
    """An optional pretraining run on unlabelled text (stage `pretrain`), fine-tuned by `train` through
    train.init_from: pretrained. The architecture is `model`; the other training settings are `train`'s."""

    source: str | None = Field(
        None, description="unlabelled text, same forms as data.source; null: no pretraining"
    )
    text_column: str = Field("text", description="the column holding the text")
    max_rows: int | None = Field(None, ge=1, description="cap on rows read from the source")
    task: Literal["mlm", "clm"] = Field("mlm", description="pretraining objective")
    include_train_texts: bool = Field(
        True, description="also pretrain on the labelled train split's texts (never val/test)"
    )
    epochs: int = Field(2, ge=1, description="passes over the pretraining corpus")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    lr: float | None = Field(None, gt=0, description="null: train.lr (auto: the pretraining task's, 0.002)")
    tokens_per_epoch: int | None = Field(
        None,
        ge=1,
        description="an epoch of pretraining is a seeded draw of this "
        "many tokens (for a corpus too big to go through); null: the whole corpus",
    )


class ServeConfig(Section):
    """`lm serve`: the HTTP scoring service (dynamic micro-batching in front of one loaded model); CLI
    overrides --host --port --backend --max-batch --max-wait-ms."""

    host: str = Field(
        "127.0.0.1", description="interface to listen on (0.0.0.0: every interface, e.g. in a container)"
    )
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    backend: Literal["eager", "onnx", "onnx-int8"] = Field(
        "eager",
        description="eager PyTorch, or an `lm export` artifact under serve.export_dir run by ONNX Runtime "
        "(onnx-int8: int8 weights, the fastest on a CPU)",
    )
    max_batch: int = Field(64, ge=1, description="most texts scored in one forward pass")
    max_wait_ms: float = Field(
        2, ge=0.0, description="how long the first queued text waits for others to join its batch"
    )
    max_queue: int = Field(
        1024, ge=1, description="texts waiting to be scored; beyond it requests get 503 + Retry-After"
    )
    max_body_bytes: int = Field(1_000_000, ge=1, description="larger request bodies get 413")
    max_texts: int = Field(256, ge=1, description="texts per request (more: 422)")
    max_chars: int = Field(10_000, ge=1, description="characters per text (more: 422)")
    max_new_tokens: int = Field(
        256,
        ge=1,
        description="most tokens one /v1/generate prompt may ask for (clm; defaults: the viz section)",
    )
    score_chunk: int = Field(
        16,
        ge=1,
        description="rows per forward pass inside a batch, shortest texts together "
        "(small chunks stay in the CPU cache; 16 was fastest on a CPU)",
    )
    device: Literal["cpu", "cuda"] = Field(
        "cpu",
        description="where a classifier is scored: cpu, or cuda (GPU 0; backend eager, or onnx / onnx-int8 "
        "with onnxruntime-gpu)",
    )
    score_threads: int = Field(
        2,
        ge=1,
        description="threads that score the chunks of a batch side by side (torch and ONNX Runtime release "
        "the GIL)",
    )
    threads: int = Field(
        1,
        ge=1,
        description="intra-op threads of each scoring call: torch's for eager, the session's for onnx / "
        "onnx-int8 (more cores: more processes, each with its own model, scale better than more threads)",
    )
    model_dir: str = Field(
        "models", description="exported model directory (config.json, weights, tokenizer/)"
    )
    export_dir: str = Field("serving", description="where `lm export` wrote the ONNX artifacts")


class Params(Section):
    """Every hyperparameter of the pipeline, validated before any stage runs."""

    task: Task = Field("classify", description="what the model learns (README task table)")
    seed: int = Field(0, description="the split, the initialisation and every random draw")
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    encode: EncodeConfig = Field(default_factory=EncodeConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    viz: VizConfig = Field(default_factory=VizConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    _inert: list[str] = PrivateAttr(default_factory=list)
    _lr_auto: bool = PrivateAttr(default=False)  # train.lr was `auto` (a pretraining run takes its task's)

    @model_validator(mode="after")
    def _task_needs(self) -> Params:
        if self.task == "classify" and not self.data.target_column:
            raise ValueError("data.target_column must be set for task=classify")
        return self

    @model_validator(mode="after")
    def _task_scoped(self) -> Params:
        """Settings of one task are inert for the others, so `dvc exp run -S task=clm` works from params
        written for classify: each is set to its neutral value here and `inert` says which were (the train
        stage prints it once)."""
        t, notes = self.train, []
        if t.lr == "auto":  # resolved here, once: every consumer reads a number
            t.lr, self._lr_auto = AUTO_LR[self.task], True
        if self.data.label_names == "auto":
            self.data.label_names = auto_label_names(self.data.source)
        if (
            self.task != "classify"
        ):  # each setting: the values that apply to every task (the first is neutral)
            for key, fine in (
                ("ensemble", (1,)),
                ("sampler", ("shuffle",)),
                ("select_by", ("auto", "val_loss")),
            ):
                if getattr(t, key) not in fine:
                    notes.append(f"train.{key}={getattr(t, key)}")
                    setattr(t, key, fine[0])
        elif t.tokens_per_epoch is not None:
            notes.append(f"train.tokens_per_epoch={t.tokens_per_epoch}")
            t.tokens_per_epoch = None
        self._inert = notes
        return self

    def auto_lr(self, task: str) -> float | None:
        """train.lr for another task's run (pretraining) when params.yaml says `auto`, else None."""
        return AUTO_LR[task] if self._lr_auto else None

    @property
    def inert(self) -> str | None:
        """One line naming the settings that do not apply to this task, or None."""
        if not self._inert:
            return None
        other = "task=classify" if self.task != "classify" else "task=clm/mlm"
        return f"{', '.join(self._inert)}: for {other} only, ignored for task={self.task}"

    @model_validator(mode="after")
    def _train_combinations(self) -> Params:
        t = self.train
        if t.min_lr > t.lr:
            raise ValueError(f"train.min_lr ({t.min_lr}) must not exceed train.lr ({t.lr})")
        if isinstance(t.min_steps, int) and t.min_steps < 1:
            raise ValueError("train.min_steps must be 'auto', null or a positive number")
        if isinstance(t.pos_weight, float) and t.pos_weight <= 0:
            raise ValueError("train.pos_weight must be 'auto', 'off' or a positive number")
        return self

    @model_validator(mode="after")
    def _placement(self) -> Params:
        """Devices and machines: combinations torchrun or the backends would reject late (or hang on)."""
        t = self.train
        if t.node_rank >= t.nnodes:
            raise ValueError(
                f"train.node_rank ({t.node_rank}) must be below train.nnodes ({t.nnodes}): machines "
                "are numbered 0 .. nnodes-1"
            )
        if t.nnodes > 1 and not t.rdzv_endpoint:
            raise ValueError(
                "train.nnodes > 1 needs train.rdzv_endpoint: host:port of machine 0 (e.g. 10.0.0.1:29500)"
            )
        if t.rdzv_endpoint is not None:
            try:
                host_port(t.rdzv_endpoint)
            except ValueError as err:
                raise ValueError(f"train.rdzv_endpoint {err}") from None
        if t.nnodes > 1 and t.rdzv_backend == "static" and t.max_restarts:
            raise ValueError(
                "train.rdzv_backend=static cannot restart workers across machines: set "
                "train.max_restarts: 0 or train.rdzv_backend: c10d"
            )
        if t.device == "mps" and t.nproc * t.nnodes > 1:
            raise ValueError(
                "train.device=mps trains in one process (no distributed backend runs on MPS): set "
                "train.nproc: 1 and train.nnodes: 1, or train.device: cpu"
            )
        if t.backend == "nccl" and t.device in ("cpu", "mps"):
            raise ValueError(
                f"train.backend=nccl needs CUDA GPUs: set train.backend: gloo (or auto) for "
                f"train.device={t.device}"
            )
        return self

    @property
    def threshold(self) -> float:
        return self.eval.threshold if self.eval.threshold is not None else self.data.threshold


def _format_error(err: ValidationError, path: Path) -> str:
    key, msg = first_problem(err)
    kind = err.errors()[0]["type"]
    if kind == "extra_forbidden":
        msg = "unknown key (check the spelling against params.yaml in the lm repository)"
    elif kind == "value_error" and "." in msg.split(" ")[0]:
        return f"{path}: {msg}"  # the message names its keys itself
    return f"{path}: {key or '(top level)'}: {msg}"


def parse_params(raw: dict[str, Any], path: Path = Path("params.yaml")) -> Params:
    try:
        params = Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_format_error(err, path)) from None
    return from_checkpoint(in_user_repository(params), path)


def in_user_repository(params: Params) -> Params:
    """A queued experiment (`dvc exp run --queue`, `dvc queue start`) runs in a copy of the repository under
    .dvc/tmp/exps/, where a relative path to a file outside the repository (`../shared/data/x.csv`) points
    nowhere. DVC gives stage commands the user's repository as DVC_ROOT: a relative path that exists there and
    not here is read from there. In the workspace DVC_ROOT is the working directory and nothing changes."""
    root = repository_root()
    if root == Path.cwd().resolve():
        return params

    def there(value: str | None) -> str | None:
        if not value or Path(value).expanduser().is_absolute() or Path(value).exists():
            return value
        return str(Path(root) / value) if (Path(root) / value).exists() else value

    def source(value: str | None) -> str | None:
        if not value or not value.startswith("hf:"):
            return there(value)
        spec = value[3:]
        left, sep, right = spec.rpartition(":")
        moved = there(spec)
        if moved == spec and sep and left:
            moved = (there(left) or left) + sep + right
        return "hf:" + str(moved)

    params.data.source = source(params.data.source) or params.data.source
    params.pretrain.source = source(params.pretrain.source)
    params.tokenizer.pretrained = there(params.tokenizer.pretrained)
    params.train.init_from = there(params.train.init_from)
    return params


def repository_root() -> Path:
    """The user's repository: DVC_ROOT under DVC (the real one, also for queued experiments), else here."""
    import os

    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


# model keys a fine-tuning run may set freely: they change no pretrained weight
CHECKPOINT_FREE_KEYS = ("dropout", "attention_dropout", "pooling", "gradient_checkpointing")


def from_checkpoint(params: Params, path: Path = Path("params.yaml")) -> Params:
    """When train.init_from is a Hugging Face checkpoint directory, the architecture is the checkpoint's and
    the training recipe is `finetune`'s. A model key left at lm's default takes the checkpoint's value; a key
    set to anything else must agree with the checkpoint (else one line naming it). A directory that does not
    exist yet (e.g. `pretrained`, made by the pretrain stage) or an lm export is left to init_from at training
    time."""
    source = params.train.init_from
    config_file = Path(source) / "config.json" if source else None
    if config_file is None or not config_file.is_file():
        return params
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"train.init_from: {config_file} is not valid JSON") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        return params
    from lm.hf_config import hf_model_keys

    try:
        theirs = ModelConfig(
            **hf_model_keys(raw, source=config_file, allow_approximate_gelu=True)["model"]
        ).model_dump()
    except (LmError, ValidationError) as err:
        raise ConfigError(
            f"train.init_from: {config_file} cannot be expressed as an lm model ({err})"
        ) from None
    if not params.tokenizer.pretrained:
        raise ConfigError(
            f"{path}: train.init_from {source} is a Hugging Face checkpoint, whose embeddings mean its "
            f"own tokenizer's ids: set tokenizer.pretrained: {source}"
        )
    default, ours = ModelConfig(), params.model.model_dump()
    model = dict(ours)
    for key, value in theirs.items():
        if ours[key] == getattr(default, key) or ours[key] == value:
            model[key] = value
        elif key not in CHECKPOINT_FREE_KEYS:
            raise ConfigError(
                f"{path}: model.{key}: {ours[key]!r} conflicts with train.init_from {source} "
                f"({value!r}); set model.{key} back to {getattr(default, key)!r} (lm's default means: "
                "the checkpoint's)"
            )
    recipe = params.finetune.model_dump()
    train = {**params.train.model_dump(), **recipe, "min_lr": min(recipe["min_lr"], recipe["lr"])}
    try:
        return params.model_copy(update={"model": ModelConfig(**model), "train": TrainConfig(**train)})
    except ValidationError as err:
        raise ConfigError(_format_error(err, path)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one silently, so a
    pasted `lr:` line would override the one the user is editing)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (lines {seen[key] + 1} and {key_node.start_mark.line + 1}): "
                    "keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ConfigError with a one-line message on any problem."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found (pass --params PATH)")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return parse_params(raw, path)
