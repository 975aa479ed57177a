"""The fused output layer + cross-entropy gives what nn.Linear then F.cross_entropy give, loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.models.linear_cross_entropy import linear_cross_entropy
from pipeline.models.seq2seq import Seq2Seq


def inputs(n: int = 300, o: int = 24, v: int = 500, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, o, generator=g).requires_grad_()
    w = (torch.randn(v, o, generator=g) * 0.2).requires_grad_()
    b = (torch.randn(v, generator=g) * 0.1).requires_grad_()
    y = torch.randint(1, v, (n,), generator=g)
    y[::5] = 0  # ignored rows
    return h, w, b, y


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize(
    ("chunk_logits", "group_logits", "row_multiple"),
    [(500 * 7, 1, 1), (500 * 7, 500 * 7 * 4, 1), (1 << 20, 1 << 23, 1), (500 * 40, 500 * 40 * 3, 16)],
)  # chunks of 7 rows (a ragged last one), each its own dW GEMM or 4 to a GEMM (a ragged last group); one chunk;
# or 300 rows padded to 304, in chunks of 32 and groups of 96
def test_matches_linear_then_cross_entropy_in_fp32(smoothing, chunk_logits, group_logits, row_multiple):
    h, w, b, y = inputs()
    want = F.cross_entropy(F.linear(h, w, b), y, ignore_index=0, label_smoothing=smoothing, reduction="sum")
    want_grads = torch.autograd.grad(want * 0.5, (h, w, b))
    sizes = {"chunk_logits": chunk_logits, "group_logits": group_logits, "row_multiple": row_multiple}
    got = linear_cross_entropy(h, w, b, y, 0, smoothing, **sizes)
    got_grads = torch.autograd.grad(got * 0.5, (h, w, b))  # the incoming gradient scales the saved ones
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)
    for g, r in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_under_bf16_autocast_it_stays_within_bf16_rounding_and_returns_fp32_grads():
    h, w, b, y = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.cross_entropy(F.linear(h, w, b).float(), y, ignore_index=0, reduction="sum")
        got = linear_cross_entropy(h, w, b, y, 0)
    assert abs(got.detach().item() - want.detach().item()) / want.detach().item() < 1e-3
    grads = torch.autograd.grad(got, (h, w, b))
    assert got.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    want_grads = torch.autograd.grad(want, (h, w, b))
    for g, r in zip(grads, want_grads, strict=True):
        assert float((g - r).abs().max()) <= 0.02 * float(r.abs().max())


def test_without_grad_only_the_loss_is_computed():
    h, w, b, y = inputs()
    with torch.no_grad():
        got = linear_cross_entropy(h, w, b, y, 0, 0.1)
    want = F.cross_entropy(F.linear(h, w, b), y, ignore_index=0, label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-3)


def test_the_translation_model_loss_is_its_logits_cross_entropy():
    torch.manual_seed(0)
    model = Seq2Seq(60, 60, embedding_dim=16, hidden_size=32, dropout=0.0, tie_embeddings=True).eval()
    src, tgt = torch.randint(3, 60, (4, 9)), torch.randint(3, 60, (4, 7))
    src_lengths = torch.tensor([9, 8, 5, 3])
    tgt[2, 5:] = 0  # padding
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    logits, _ = model(src, src_lengths, tgt_in)
    want = F.cross_entropy(
        logits.flatten(0, 1), tgt_out.flatten(), ignore_index=0, label_smoothing=0.1, reduction="sum"
    )
    got = model.summed_nll(src, src_lengths, tgt_in, tgt_out, label_smoothing=0.1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_row_counts_of_any_batch_meet_few_gemm_shapes():
    """oneDNN compiles a kernel per new bf16 GEMM shape (ms each): 64 batches of 64 different sizes (N = 100..163)
    must share a handful of shapes, not bring three new ones each."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shapes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: set[tuple] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                self.seen.add(tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
            return func(*args, **(kwargs or {}))

    shapes = Shapes()
    with shapes:
        for n in range(100, 164):
            h, w, b, y = inputs(n=n)
            linear_cross_entropy(h, w, b, y, 0, chunk_logits=500 * 40).backward()
    assert len(shapes.seen) <= 12, sorted(shapes.seen)
