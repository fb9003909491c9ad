"""The LM head and its cross-entropy as one chunked operation, for training.

The plain route materialises the (N, V) logits, keeps them alive until backward, and walks them again in
log_softmax, nll_loss and their two backward kernels (plus an (N, V) zero fill). Here the logits of a few
hundred rows at a time are computed, turned into the loss and straight into the gradient softmax - onehot,
multiplied into the gradients of the hidden states and of the head weight, and dropped: the same three
matrix products, fewer passes over memory, and no (N, V) tensor kept (the idea of Liger-Kernel's fused
linear cross-entropy). Backward only scales the stored gradients by the incoming scalar.

Rows whose target is `ignore_index` are removed before the head, so a masked LM pays for its ~15% masked
positions only. The result is the SUM of the per-token losses, as the training objectives want, in float32
(float64 for a float64 model: lm.model.precision). Under autocast the matrix products run in the autocast
dtype and the softmax in fp32, like the plain route.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lm.data.masking import IGNORE_INDEX
from lm.model.precision import at_least_fp32


def _compute_dtype(t: Tensor) -> torch.dtype:
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


def _chunk_rows(vocab: int, device: torch.device) -> int:
    """Rows per chunk: about 4 MB of fp32 logits on CPU (so they stay in cache), about 256 MB on an
    accelerator (few, large matrix products); at least 128 rows whatever the vocabulary, since thinner
    matrix products run far below the CPU's peak (32 rows x a 50k vocabulary: about 2/3 of it)."""
    budget = (1 << 20) if device.type == "cpu" else (1 << 26)  # fp32 elements
    return max(128, budget // max(vocab, 1))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        dtype: torch.dtype,
        grads: bool,
    ):
        N, V = hidden.shape[0], weight.shape[0]
        acc = at_least_fp32(hidden.dtype)  # softmax / loss precision
        want_h, want_w = grads and ctx.needs_input_grad[0], grads and ctx.needs_input_grad[1]
        want_b = grads and bias is not None and ctx.needs_input_grad[2]
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        grad_b = torch.zeros(V, dtype=acc, device=weight.device) if want_b else None
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        step = _chunk_rows(V, hidden.device)
        for start in range(0, N, step):
            h = hidden[start : start + step].to(dtype)  # (c, E)
            t = targets[start : start + step]  # (c,)
            logits = (h @ w.t() if b is None else torch.addmm(b, h, w.t())).to(acc)  # (c, V)
            logp = torch.log_softmax(logits, dim=-1)
            del logits
            picked = logp.gather(1, t[:, None])  # (c, 1)
            loss -= picked.sum()
            if not (want_h or want_w or want_b):
                continue
            g = logp.exp_()  # softmax, in place
            g.scatter_add_(1, t[:, None], torch.full_like(picked, -1.0))  # d loss / d logits = p - onehot
            g = g.to(dtype)
            if want_h:
                grad_h[start : start + step] = g @ w
            if want_w:
                if dtype == acc:
                    grad_w.addmm_(g.t(), h)  # (V, E) += (V, c) @ (c, E)
                else:
                    grad_w += g.t() @ h  # low-precision product, fp32 accumulation
            if want_b:
                grad_b += g.to(acc).sum(0)
        ctx.save_for_backward(
            grad_h,
            grad_w.to(weight.dtype) if want_w else None,
            grad_b.to(bias.dtype) if want_b else None,
        )
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor):
        grad_h, grad_w, grad_b = (g * grad_loss if g is not None else None for g in ctx.saved_tensors)
        return grad_h, grad_w, grad_b, None, None, None


def linear_cross_entropy_sum(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    ignore_index: int = IGNORE_INDEX,
    rows: Tensor | None = None,
) -> Tensor:
    """sum_i CE(hidden_i @ weight^T + bias, targets_i) over rows whose target is not `ignore_index`.

    hidden: (..., E); targets: (...) long; weight: (V, E). Equals
    F.cross_entropy(F.linear(hidden, weight, bias).float().flatten(0, -2), targets.flatten(), reduction="sum")
    with gradients for hidden, weight and bias. `rows`: the flat indices of the targets that count, when the
    caller knows them (the objectives find them on the host with the batch): finding them here from the
    targets on an accelerator would make the host wait for the device."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1).to(hidden.device)
    if rows is None:
        keep = targets != ignore_index
        rows = None if bool(keep.all()) else keep.nonzero().squeeze(1)
    if rows is not None:
        rows = rows.to(hidden.device)
        hidden, targets = hidden.index_select(0, rows), targets.index_select(0, rows)
    dtype = _compute_dtype(hidden)
    grads = torch.is_grad_enabled()  # under no_grad (validation) only the loss is computed
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, dtype, grads)
