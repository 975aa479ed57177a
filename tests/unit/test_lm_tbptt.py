"""Truncated BPTT: equals full BPTT when the window covers the sequence, carries the state exactly, keeps the graph
from growing, and really truncates when the window is shorter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.models.language_model import RNNLanguageModel
from pipeline.tasks.tbptt import truncated_bptt, windows

V, B, T = 11, 3, 24


def model(cell: str) -> RNNLanguageModel:
    torch.manual_seed(0)
    return RNNLanguageModel(V, embedding_dim=8, hidden_size=16, num_layers=2, cell=cell, dropout=0.0)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(0, V, (B, T + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


def window_fn(net, tokens, targets):
    def fn(window: slice, state):
        logits, state = net(tokens[:, window], state)
        return F.cross_entropy(logits.flatten(0, 1), targets[:, window].flatten()), state

    return fn


def grads(net) -> list[torch.Tensor]:
    return [p.grad.clone() for p in net.parameters()]


def tbptt_grads(net, size: int | None, weight_by_length: bool = True) -> list[torch.Tensor]:
    """Accumulate every window's gradient (weighted so the sum is the gradient of the mean over all steps)."""
    tokens, targets = data()
    net.zero_grad()

    def on_loss(loss, window):
        (loss * (window.stop - window.start) / T if weight_by_length else loss).backward()
        return True

    truncated_bptt(window_fn(net, tokens, targets), T, size, None, on_loss)
    return grads(net)


def full_grads(net) -> list[torch.Tensor]:
    tokens, targets = data()
    net.zero_grad()
    logits, _ = net(tokens)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    return grads(net)


def test_windows_are_fixed_length_slices_not_n_chunks():
    assert windows(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert windows(10, None) == [slice(0, 10)] and windows(10, 50) == [slice(0, 10)]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_window_covering_the_sequence_gives_the_full_bptt_gradient(cell):
    net = model(cell)
    for size in (T, 2 * T, None):
        for a, b in zip(tbptt_grads(net, size), full_grads(net), strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_shorter_windows_really_truncate_the_gradient(cell):
    net = model(cell)
    truncated, full = tbptt_grads(net, 6), full_grads(net)
    recurrent = [i for i, (name, _) in enumerate(net.named_parameters()) if "weight_hh" in name]
    assert any(not torch.allclose(truncated[i], full[i]) for i in recurrent)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_with_the_state_carried_two_windows_score_like_one_pass(cell):
    net = model(cell)
    tokens, targets = data()
    with torch.no_grad():
        logits, _ = net(tokens)
        one_pass = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        losses = []
        truncated_bptt(
            window_fn(net, tokens, targets), T, T // 2, None, lambda loss, w: losses.append(loss) or True
        )
    assert len(losses) == 2
    torch.testing.assert_close((losses[0] + losses[1]) / 2, one_pass)
    with torch.no_grad():  # and without carrying it the second window scores differently (the test can fail)
        first, _ = net(tokens[:, : T // 2])
        cold, _ = net(tokens[:, T // 2 :])
    assert not torch.allclose(cold, logits[:, T // 2 :])
    torch.testing.assert_close(first, logits[:, : T // 2])


def graph_size(loss: torch.Tensor) -> int:
    """Autograd nodes reachable from ``loss``: what backward would walk through."""
    seen, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo += [next_node for next_node, _ in node.next_functions]
    return len(seen)


def run_many_windows(detach: bool, n: int = 40) -> tuple[list[int], list[int]]:
    """Graph nodes and bytes saved for backward, per window, over ``n`` windows of one long stream."""
    net = model("lstm")
    g = torch.Generator().manual_seed(2)
    seq = torch.randint(0, V, (B, 4 * n + 1), generator=g)
    nodes, saved = [], []
    state = None
    for k in range(n):
        packed = [0]

        def pack(t, packed=packed):
            packed[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits, state = net(seq[:, 4 * k : 4 * k + 4], state)
            loss = F.cross_entropy(logits.flatten(0, 1), seq[:, 4 * k + 1 : 4 * k + 5].flatten())
        nodes.append(graph_size(loss))
        saved.append(packed[0])
        loss.backward(retain_graph=not detach)
        if detach:
            from pipeline.models.recurrent import detach_state

            state = detach_state(state)
    return nodes, saved


def test_the_graph_and_saved_memory_stay_flat_across_windows():
    nodes, saved = run_many_windows(detach=True)
    assert len(set(nodes)) == 1 and len(set(saved[1:])) == 1  # window 40 costs what window 2 costs
    grown, _ = run_many_windows(detach=False, n=10)  # the same loop without detaching: the graph grows
    assert grown[-1] > grown[0] * 4  # it grows with every window


def test_truncated_bptt_hands_back_a_state_without_graph():
    net = model("lstm")
    tokens, targets = data()

    def on_loss(loss, window):
        loss.backward()
        return True

    state = truncated_bptt(window_fn(net, tokens, targets), T, 5, None, on_loss)
    assert all(s.grad_fn is None and not s.requires_grad for s in state)


def test_a_skipped_step_drops_the_state_that_produced_it():
    net = model("gru")
    tokens, targets = data()
    seen = []

    def on_loss(loss, window):
        seen.append(window)
        return window.start != 0  # pretend the first window was non-finite and skipped

    def fn(window, state):
        seen.append(state is None)
        return window_fn(net, tokens, targets)(window, state)

    truncated_bptt(fn, T, T // 2, None, on_loss)
    assert seen[0] is True and seen[2] is True  # the second window starts from zeros again


def test_the_task_carries_the_state_across_batches_until_the_streams_restart():
    from pipeline.tasks.language_model import LanguageModelTask

    net = model("lstm")
    task = LanguageModelTask(network=net)
    _, carried = net(torch.zeros(4, 3, dtype=torch.long))
    batch = {"tokens": torch.zeros(4, 5, dtype=torch.long), "reset": False}
    assert task.start_state(batch, carried) is carried
    assert task.start_state({**batch, "reset": True}, carried) is None  # an epoch's first window: zeros
    assert task.start_state({"tokens": torch.zeros(3, 5, dtype=torch.long)}, carried) is None  # another B
    assert task.start_state({"tokens": batch["tokens"], "position": (2, 1)}, carried) is None  # spine loaders
    assert task.start_state({"tokens": batch["tokens"], "position": (2, 7)}, carried) is carried
    independent = LanguageModelTask(network=net, carry_state=False)  # e.g. separate video clips
    assert independent.start_state(batch, carried) is None
