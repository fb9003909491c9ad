"""Stage `visualize`: attention heatmaps for a few test examples (every layer, heads side by side) and a
markdown table of what the model does: classifier scores, masked-token fills with top-5, or samples."""

from __future__ import annotations

from pathlib import Path

from lm.config import Params
from lm.io import atomic_write_text, require
from lm.labels import label_of
from lm.paths import ATTENTION, ENCODED, MODELS, PREDICTIONS, SPLIT


def run(
    params: Params,
    model_dir=MODELS,
    encoded_dir=ENCODED,
    split_dir=SPLIT,
    out_dir=ATTENTION,
    predictions_path=PREDICTIONS,
) -> None:
    import shutil

    from rich.console import Console

    from lm.data.encoded import Encoded
    from lm.data.split import load_split
    from lm.infer.predict import load_trained

    require(Path(model_dir) / "config.json", "lm train")
    trained = load_trained(Path(model_dir))
    enc = Encoded.open(encoded_dir)
    enc.check_task(trained.task)
    test_rows = load_split(split_dir)["test"]
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    if trained.task == "classify":
        table = _classify(params, trained, enc, test_rows, out_dir)
    elif trained.task == "mlm":
        table = _mlm(params, trained, enc, test_rows, out_dir)
    else:
        table = _clm(params, trained, out_dir)
    atomic_write_text(predictions_path, table)
    Console(stderr=True).print(
        f"visualize: {len(list(out_dir.glob('*.png')))} attention maps -> {out_dir}, table -> "
        f"{predictions_path}"
    )


def _tokens(trained, ids) -> list[str]:
    return [trained.tokenizer.token_str(int(i)) for i in ids]


def _attention_png(trained, ids, mask, path: Path, title: str) -> None:
    """Run the model on one row and plot its real-token attention, one row of heads per layer."""
    import torch

    from lm.viz.attention import plot_attention

    with torch.no_grad():
        out = trained.model(ids, mask, return_attention=True)
    n = int(mask[0].sum())
    maps = [a[0, :, :n, :n].float().numpy() for a in out.attentions]  # per layer (H, n, n)
    plot_attention(_tokens(trained, ids[0, :n]), maps, path, title=title)


def _pick_examples(enc, rows, threshold: float, n: int):
    """Alternate positive and negative test rows, so the maps show both classes; top up from the rest."""
    labels = enc.targets[rows] >= threshold
    picked = [r for pair in zip(rows[labels], rows[~labels]) for r in pair][:n]
    rest = [r for r in rows if r not in picked]
    return picked + rest[: n - len(picked)]


def _classify(params: Params, trained, enc, test_rows, out_dir: Path) -> str:
    import numpy as np

    from lm.data.batches import RowItems
    from lm.infer.scoring import classifier_probs
    from lm.viz.predictions import classifier_predictions_markdown

    for k, row in enumerate(_pick_examples(enc, test_rows, params.threshold, params.viz.n_examples)):
        one = RowItems(enc, np.array([row]))
        prob = float(classifier_probs(trained.model, one, 1)[1][0])
        batch = one.batch(np.arange(1))
        title = (
            f"test row {row}: target {enc.targets[row]:.2f}, predicted score {prob:.2f} "
            f"({label_of(prob, params.threshold, params.data.label_names)})"
        )
        _attention_png(
            trained, batch["input_ids"], batch["attention_mask"], out_dir / f"example_{k}.png", title
        )
    shown = test_rows[: max(20, params.viz.n_examples)]
    items = RowItems(enc, shown)
    batch = items.batch(np.arange(len(shown)))
    probs = classifier_probs(trained.model, items, len(shown))[1]
    rows = []
    for j, row in enumerate(shown):
        n = int(batch["attention_mask"][j].sum())
        text = trained.tokenizer.decode(batch["input_ids"][j, :n].tolist(), skip_special=True)
        rows.append(
            {
                "text": text,
                "target": float(enc.targets[row]),
                "prob": float(probs[j]),
                "label": label_of(float(probs[j]), params.threshold, params.data.label_names),
            }
        )
    return "# Test predictions\n\n" + classifier_predictions_markdown(rows)


def _mlm(params: Params, trained, enc, test_rows, out_dir: Path) -> str:
    import numpy as np
    import torch

    from lm.data.batches import make_items
    from lm.data.masking import IGNORE_INDEX
    from lm.data.objectives import make_objective
    from lm.infer.scoring import top_k_tokens
    from lm.viz.predictions import masked_predictions_markdown

    objective = make_objective(params.model_copy(update={"task": "mlm"}), enc, np.zeros(0, dtype=np.int64))
    items = make_items(enc, test_rows, "mlm", enc.max_len)  # the packed windows evaluation scores
    records = []
    shown = max(params.viz.n_examples, 8)
    batch = objective.prepare(items.batch(np.arange(min(shown, len(items)))), train=False)
    with torch.no_grad():
        logits = trained.model(batch["input_ids"], batch["attention_mask"]).logits
    tok = trained.tokenizer
    for j in range(len(batch["input_ids"])):
        n = int(batch["attention_mask"][j].sum())
        ids = batch["input_ids"][j, :n]
        for pos in (batch["labels"][j, :n] != IGNORE_INDEX).nonzero().flatten().tolist():
            top5 = top_k_tokens(logits[j, pos], 5)
            context = "".join(
                f"[{tok.token_str(int(t))}]" if i == pos else tok.token_str(int(t))
                for i, t in enumerate(ids[1:], 1)
            )
            records.append(
                {
                    "text": context,
                    "true": tok.token_str(int(batch["labels"][j, pos])),
                    "pred": tok.token_str(top5[0][0]),
                    "top5": [(tok.token_str(i), q) for i, q in top5],
                }
            )
        if j < params.viz.n_examples:
            _attention_png(
                trained,
                batch["input_ids"][j : j + 1, :n],
                batch["attention_mask"][j : j + 1, :n],
                out_dir / f"example_{j}.png",
                f"test window at token {int(batch['rows'][j])} (masked input)",
            )
    return "# Masked-token predictions (test split, fixed masks)\n\n" + masked_predictions_markdown(records)


def _clm(params: Params, trained, out_dir: Path) -> str:
    import torch

    from lm.viz.predictions import samples_markdown

    v = params.viz
    items = []
    for k, prompt in enumerate(v.prompts):
        text = trained.complete(
            prompt,
            max_new_tokens=v.max_new_tokens,
            temperature=v.temperature,
            top_k=v.top_k,
            top_p=v.top_p,
            seed=params.seed + k,
        )
        items.append(
            {
                "prompt": prompt,
                "completion": text[len(prompt) :],
                "temperature": v.temperature,
                "top_k": v.top_k,
                "top_p": v.top_p,
            }
        )
        if k < v.n_examples:
            ids = trained.tokenizer.encode(text, allowed_special=set())[: trained.max_len]
            t = torch.tensor([ids])
            _attention_png(
                trained,
                t,
                torch.ones_like(t, dtype=torch.bool),
                out_dir / f"example_{k}.png",
                f"sample {k}: prompt {prompt!r}",
            )
    return "# Samples\n\n" + samples_markdown(items)
