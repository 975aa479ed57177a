"""A decoder run step by step with cast-once weights computes what nn.GRU / nn.LSTM compute, gradients included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.models.loop_weights import LoopBmm, LoopLinear, LoopRNN
from pipeline.models.seq2seq import Seq2Seq


@pytest.mark.parametrize("ahead", [0, 4])
@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_loop_rnn_in_fp32_matches_the_module_outputs_and_weight_gradients(mode, ahead):
    """ahead > 0: the first input columns projected for all steps before the loop, as the decoder does with the
    target embeddings; the same outputs and the same gradient of the whole W_ih."""
    torch.manual_seed(0)
    rnn = getattr(nn, mode)(6, 5, num_layers=2, batch_first=True)
    x = torch.randn(3, 7, 6)
    h0 = torch.randn(2, 3, 5)
    state = (h0, torch.randn(2, 3, 5)) if mode == "LSTM" else h0
    want, _ = rnn(x, state)
    want.square().sum().backward()
    want_grads = [p.grad.clone() for p in rnn.parameters()]
    rnn.zero_grad()
    loop, outs, s = LoopRNN(rnn, torch.float32, ahead=ahead), [], state
    projected = loop.project(x[..., :ahead]) if ahead else None  # (B, T, gates * H)
    for t in range(7):
        out, s = loop.step(x[:, t, ahead:], s, projected[:, t] if ahead else None)
        outs.append(out)
    got = torch.stack(outs, 1)
    got.square().sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip([p.grad for p in rnn.parameters()], want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)  # one GEMM over the steps = the per-step sum


def test_a_shared_linear_gradient_is_the_sum_over_steps():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    xs = [torch.randn(2, 4) for _ in range(5)]
    shared = LoopLinear.of(layer, torch.float32)
    sum(shared(x).tanh().sum() for x in xs).backward()
    got = layer.weight.grad.clone(), layer.bias.grad.clone()
    layer.zero_grad()
    sum(layer(x).tanh().sum() for x in xs).backward()
    torch.testing.assert_close(got[0], layer.weight.grad)
    torch.testing.assert_close(got[1], layer.bias.grad)


def test_a_memory_read_at_every_step_gets_the_sum_over_steps_as_its_gradient():
    torch.manual_seed(0)
    m = torch.randn(3, 5, 7, requires_grad=True)  # (B, K, N): attention keys or memory
    queries = [torch.randn(3, 1, 5, requires_grad=True) for _ in range(4)]  # (B, 1, K) per step
    loop = LoopBmm(m)
    sum(loop(q).tanh().sum() for q in queries).backward()
    got = m.grad.clone(), [q.grad.clone() for q in queries]
    m.grad = None
    for q in queries:
        q.grad = None
    sum(torch.bmm(q, m).tanh().sum() for q in queries).backward()
    torch.testing.assert_close(got[0], m.grad)  # one bmm over the steps = the per-step outer products summed
    for g, q in zip(got[1], queries, strict=True):
        torch.testing.assert_close(g, q.grad)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_teacher_forced_decoder_under_bf16_autocast_agrees_with_the_module_path(cell):
    torch.manual_seed(0)
    model = Seq2Seq(50, 50, embedding_dim=16, hidden_size=32, cell=cell, decoder_layers=2, dropout=0.0)
    src, tgt = torch.randint(3, 50, (4, 8)), torch.randint(3, 50, (4, 6))
    lengths = torch.tensor([8, 6, 5, 2])

    def loss_and_grads(fast: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False, enabled=True):
            if not fast:  # the module path: what the step loop ran before (and still runs outside autocast)
                memory, state = model.start(src, lengths)
                emb = model.drop(model.tgt_embed(tgt))
                vecs = []
                for t in range(tgt.size(1)):
                    vec, state, _ = model._step_vectors(emb[:, t], memory, state)
                    vecs.append(vec)
                vec = torch.stack(vecs, 1)
            else:
                vec, _ = model.vectors(src, lengths, tgt)
            loss = vec.float().square().sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    slow, fast = loss_and_grads(False), loss_and_grads(True)
    assert abs(float(slow[0] - fast[0])) <= 0.01 * float(slow[0])
    assert slow[1].keys() == fast[1].keys()
    for name, g in slow[1].items():  # bf16 rounding apart, the same gradients reach every weight
        assert float((fast[1][name] - g).abs().max()) <= 0.05 * float(g.abs().max()) + 1e-6, name
