"""Output layer and cross-entropy in one pass over row chunks, without the (N, V) logits in memory.

``F.cross_entropy(generator(h), y)`` writes the logits of every target position (N x V: 2,500 x 8,000 floats for one
translation batch, 80 MB in fp32), reads them back for the log-softmax, writes its gradient, reads that again for the
two matmuls of the backward. On a CPU those passes over memory cost more than the matmuls themselves (a profile of
the translation config: log-softmax forward and backward, the bf16 -> fp32 copy of the logits and the zero-filled
gradient took 35% of the step). Here each chunk of rows goes through the whole thing while it is in cache::

    for rows r of h (N, O), in chunks of ~1M logits:
        z = h_r W^T + b                      (c, V)  compute dtype (bf16 under autocast), then fp32
        loss += sum over real rows of (1 - eps) (lse(z) - z_y) + eps (lse(z) - mean(z))
        g = softmax(z) - (1 - eps) onehot(y) - eps / V, zero on ignored rows      d loss / d z
        dh_r = g W,  dW += g^T h_r,  db += sum_r g                                 the backward, done now

The gradients are made in the forward (a training step always asks for them; Liger-Kernel's fused linear
cross-entropy does the same on GPUs) and scaled by the incoming gradient in the backward. Without grad (evaluation)
only the loss is computed. The result equals ``F.cross_entropy(h @ W.T + b, y, ignore_index, label_smoothing,
reduction="sum")`` to float rounding; W's gradient is summed over chunks in fp32.
"""

from __future__ import annotations

import torch


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    chunk_logits: int = 1 << 20,
    group_logits: int = 1 << 23,
    row_multiple: int = 16,
) -> torch.Tensor:
    """Summed cross-entropy of ``hidden (N, O) @ weight (V, O)^T + bias (V,)`` against ``target (N,)``.

    Under autocast the matmuls run in the autocast dtype, as ``nn.Linear`` would; everything else in fp32.
    ``chunk_logits``: logits per chunk of rows (kept in cache); ``group_logits``: gradient rows per GEMM of ``dW``.
    ``row_multiple``: every GEMM gets a multiple of this many rows (ignored zero rows pad the last chunk), so that a
    run meets few distinct shapes: oneDNN compiles a bf16 kernel for each new one. N differs in every translation
    batch, and its ragged last chunk and group were three new GEMM shapes per step, 27 ms to build each (ONEDNN_VERBOSE
    on the AMX Xeon: 68 ms of a 1.3 s step); with 16, a run has at most ~80 shapes here, all soon in the cache.
    """
    device = hidden.device.type
    compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    vocab = max(1, weight.size(0))
    chunk = max(row_multiple, chunk_logits // vocab // row_multiple * row_multiple)
    group = chunk * max(1, group_logits // vocab // chunk)  # a whole number of chunks
    n = hidden.size(0)
    pad = -n % row_multiple
    if pad:  # ignored rows: no loss and no gradient to W or b; cat's backward drops their dh
        hidden = torch.cat([hidden, hidden.new_zeros(pad, hidden.size(1))])  # (N + pad, O)
        target = torch.cat([target, target.new_full((pad,), ignore_index)])
    return _LinearCrossEntropy.apply(
        hidden, weight, bias, target, ignore_index, float(label_smoothing), (chunk, group), compute
    )


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, ignore_index, smoothing, sizes, compute):  # noqa: PLR0913
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grads = need_h or need_w or need_b
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(compute), weight.to(compute)
            w_t = w.t().contiguous()  # (O, V): a transposed GEMM operand would be copied for every chunk
            b = bias.to(compute) if bias is not None else None
            n, vocab = h.size(0), w.size(0)
            dh = torch.empty_like(h) if need_h else None  # (N, O)
            dw_t = torch.zeros(w_t.shape, dtype=torch.float32, device=w.device) if need_w else None  # (O, V)
            db = torch.zeros(vocab, dtype=torch.float32, device=w.device) if need_b else None  # (V,)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            chunk, group = sizes  # rows per chunk, rows per dW GEMM (a whole number of chunks)
            # dW from a group of chunks at once: their gradients are written (low dtype) into one buffer and a single
            # (O, rows) x (rows, V) GEMM sums them in fp32 inside it. Per chunk, the bf16 product's conversion for
            # the fp32 add cost as much as the GEMM (Xeon with AMX, 1 thread: 70 ms of a 1.7 s translation step).
            g_low = torch.empty((min(n, group), vocab), dtype=compute, device=h.device) if need_w else None
            first = 0  # the group's first row
            for start in range(0, n, chunk):
                rows = slice(start, min(n, start + chunk))
                hr, y = h[rows], target[rows]  # (c, O), (c,)
                z = (torch.addmm(b, hr, w_t) if b is not None else hr @ w_t).float()  # (c, V)
                real = y != ignore_index  # (c,)
                y = torch.where(real, y, 0)
                lse = torch.logsumexp(z, dim=-1)  # (c,)
                per_row = (lse - z.gather(1, y[:, None])[:, 0]) * (1.0 - smoothing)
                if smoothing:
                    per_row = per_row + (lse - z.mean(dim=-1)) * smoothing
                total += per_row[real].sum()
                if not grads:
                    continue
                g = z.sub_(lse[:, None]).exp_()  # softmax (c, V), in place of z (no new 4 MB per chunk)
                if smoothing:
                    g -= smoothing / vocab
                g.scatter_add_(1, y[:, None], torch.full((len(y), 1), smoothing - 1.0, device=g.device))
                g *= real[:, None]
                if need_b:
                    db += g.sum(0)
                if need_w:
                    gc = g_low[start - first : rows.stop - first]  # (c, V)
                    gc.copy_(g)
                else:
                    gc = g.to(compute)
                if need_h:
                    dh[rows] = gc @ w
                if need_w and (rows.stop - first == group or rows.stop == n):
                    # (O, rows) x (rows, V) added in fp32; the small operand contiguous: transposed, it took the
                    # GEMM twice as long with oneDNN's AMX kernels
                    dw_t.add_(h[first : rows.stop].t().contiguous() @ g_low[: rows.stop - first])
                    first = rows.stop
        # (V, O), contiguous: autograd adds it to the embedding's gradient when the weights are tied, and a
        # transposed operand made that add 5x slower
        dw = dw_t.t().contiguous() if need_w else None
        ctx.save_for_backward(dh, dw, db)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        dh, dw, db = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        scale = grad_out.float()
        return (
            (dh.float() * scale).to(h_dtype) if dh is not None else None,
            (dw * scale).to(w_dtype) if dw is not None else None,
            (db * scale).to(b_dtype) if db is not None else None,
            None,
            None,
            None,
            None,
            None,
        )
