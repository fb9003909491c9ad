"""Use an exported model (models/: weights, config.json, tokenizer/) on new text.

`lm predict` and `lm generate` load the export through here; it needs nothing from the pipeline's data/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lm.errors import LmError
from lm.labels import decision_of, labels_of
from lm.tokenizer import classifier_rows


def read_texts(path: Path, text_column: str = "text") -> list[str]:
    """The texts of `read_table`."""
    return read_table(path, text_column)[0]


def read_table(
    path: Path, text_column: str = "text", id_column: str | None = None
) -> tuple[list[str], list[str] | None]:
    """(texts, ids): ids are the `id_column` cells as text when the table has that column (None otherwise), so
    an output can carry each input row's key. Texts from a .txt (one per non-empty line) or a
    .csv/.parquet/.jsonl table's text column, one per row: an empty or missing cell is the empty text (its row
    is kept, so output rows line up with input rows), and a cell reading "NA" or "null" is that text. The
    encoding is detected as in `lm download` (data.encoding auto)."""
    from lm.data.text_encoding import text_encoding

    path = Path(path)
    if not path.is_file():
        raise LmError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".csv", ".parquet", ".jsonl"):
        raise LmError(f"{path}: unsupported extension {suffix!r}; use .txt, .csv, .parquet or .jsonl")
    try:
        if suffix == ".txt":
            text = path.read_text(encoding=text_encoding(path, "auto"))
            return [line for line in text.splitlines() if line.strip()], None
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=text_encoding(path, "auto"))
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=True, dtype=False, encoding=text_encoding(path, "auto"))
    except (ValueError, OSError, pd.errors.ParserError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise LmError(f"{path}: not a readable {suffix[1:]} file ({first})") from None
    if text_column not in frame.columns:
        raise LmError(
            f"{path}: no column {text_column!r} "
            f"(columns: {', '.join(map(str, frame.columns))}); pass --text-column"
        )
    texts = ["" if _missing(v) else str(v) for v in frame[text_column].tolist()]
    ids = (
        ["" if _missing(v) else str(v) for v in frame[id_column].tolist()]
        if id_column and id_column in frame.columns
        else None
    )
    return texts, ids


def _missing(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays and other containers are values, not missing
        return False


@dataclass
class Trained:
    model: nn.Module
    config: dict[str, Any]
    tokenizer: Any

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def max_len(self) -> int:
        return int(self.config["max_len"])

    def _rows(self, texts: list[str], allowed: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer
        if self.task == "classify":
            rows = classifier_rows(tok, texts, self.max_len)
        else:  # mlm windows start with the cls token; clm reads the text alone
            prefix = [tok.cls_id] if self.task == "mlm" else []
            encoded = tok.encode_batch(texts, allowed_special=allowed, disallowed="as_text")
            rows = [(prefix + ids)[: self.max_len] for ids in encoded]
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
        return ids, mask

    @torch.no_grad()
    def predict(self, texts: list[str], *, top_k: int = 5, batch_size: int = 64) -> pd.DataFrame:
        if self.task == "classify":
            # an empty (or blank) text is not scored, as `lm serve` refuses it:
            # its row stays, score NaN, no label
            threshold, names = decision_of(self.config)
            scored = [i for i, t in enumerate(texts) if t.strip()]
            probs = np.full(len(texts), np.nan)
            for lo in range(0, len(scored), batch_size):
                part = scored[lo : lo + batch_size]
                ids, mask = self._rows([texts[i] for i in part], set())
                probs[part] = torch.sigmoid(self.model(ids, mask).logits.float()).numpy()
            return pd.DataFrame(
                {"text": texts, "score": np.round(probs, 4), "label": labels_of(probs, threshold, names)}
            )
        if self.task == "mlm":
            return self._fill_masks(texts, top_k)
        return self._next_tokens(texts, top_k)

    def _candidates(self, logits: torch.Tensor, top_k: int) -> list[tuple[str, float]]:
        from lm.infer.scoring import top_k_tokens

        return [(self.tokenizer.token_str(i), round(q, 4)) for i, q in top_k_tokens(logits, top_k)]

    @torch.no_grad()
    def fills(self, text: str, top_k: int) -> list[tuple[int, list[tuple[str, float]]]]:
        """mlm: for each <|mask|> of text, its token position and the top_k (token, probability)
        candidates."""
        ids, mask = self._rows([text], {self.tokenizer.mask_token})
        logits = self.model(ids, mask).logits[0]  # (L, V)
        return [
            (pos, self._candidates(logits[pos], top_k))
            for pos in (ids[0] == self.tokenizer.mask_id).nonzero().flatten().tolist()
        ]

    def _fill_masks(self, texts: list[str], top_k: int) -> pd.DataFrame:
        records = []
        for row, text in enumerate(texts):
            mask_token = self.tokenizer.mask_token
            if mask_token not in text:
                raise LmError(
                    f"mlm predict: text {row + 1} has no {mask_token}; put one where a token should be "
                    f"filled in: {text[:60]!r}"
                )
            for pos, cands in self.fills(text, top_k):
                records.append(
                    {
                        "text": text,
                        "position": pos,
                        "prediction": cands[0][0],
                        "top": ", ".join(f"{t!r} {q:.1%}" for t, q in cands),
                    }
                )
        return pd.DataFrame(records)

    def _next_tokens(self, texts: list[str], top_k: int) -> pd.DataFrame:
        records = []
        for text in texts:
            ids = self.tokenizer.encode(text, allowed_special=set(), disallowed="as_text")[
                -self.max_len :
            ] or [self.tokenizer.eot_id]
            logits = self.model(torch.tensor([ids])).logits[0, -1]
            cands = self._candidates(logits, top_k)
            records.append(
                {"text": text, "next": cands[0][0], "top": ", ".join(f"{t!r} {q:.1%}" for t, q in cands)}
            )
        return pd.DataFrame(records)

    def complete(
        self,
        text: str,
        *,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
    ) -> str:
        """text and its continuation (see `continuation`)."""
        return text + self.continuation(
            text, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
        )

    def continuation(
        self,
        text: str,
        *,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
    ) -> str:
        """clm: the text the decoder writes after `text` (up to max_new_tokens, stopping at <|endoftext|>)."""
        from lm.infer.generate import generate

        if self.task != "clm":
            raise LmError(
                f"generate needs a decoder trained with task=clm; {self.config.get('task')} model given"
            )
        tok = self.tokenizer
        prompt = tok.encode(text, allowed_special=set(), disallowed="as_text") or [tok.eot_id]
        new = generate(
            self.model,
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=tok.eot_id,
            seed=seed,
        )
        return tok.decode([i for i in new if i != tok.eot_id])


def load_trained(model_dir: Path) -> Trained:
    from lm.model.export import load_exported
    from lm.tokenizer import load_tokenizer

    model, config = load_exported(Path(model_dir))
    tok = load_tokenizer(Path(model_dir) / "tokenizer")
    if tok.hash != config["tokenizer_hash"]:
        raise LmError(
            f"{model_dir}/tokenizer does not match the model (hash differs): re-export with `lm train`"
        )
    return Trained(model, config, tok)
