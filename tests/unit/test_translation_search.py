"""Decoding: beam 1 is greedy, lengths are bounded, and search steps agree with the training pass."""

from __future__ import annotations

import pytest
import torch

from pipeline.data.tokenizer import BOS, EOS
from pipeline.models.beam_search import beam_search, greedy_search, max_lengths
from pipeline.models.seq2seq import Seq2Seq

IDS = {"bos": BOS, "eos": EOS}  # the search takes the vocabulary's ids as arguments


def model_and_batch(cell: str = "gru", input_feeding: bool = True, seed: int = 0, eos_boost: float = 2.0):
    torch.manual_seed(seed)
    model = Seq2Seq(40, 40, embedding_dim=16, hidden_size=32, cell=cell, input_feeding=input_feeding).eval()
    with torch.no_grad():  # make EOS likely enough that some hypotheses end before the length limit
        model.generator.bias[EOS] += eos_boost
    src = torch.randint(4, 40, (6, 7))
    lengths = torch.tensor([7, 5, 4, 3, 2, 1])
    for b, n in enumerate(lengths.tolist()):
        src[b, n:] = 0
    return model, src, lengths


@pytest.mark.parametrize("cell,input_feeding", [("gru", True), ("lstm", False), ("rnn", True)])
def test_beam_of_one_equals_greedy(cell: str, input_feeding: bool) -> None:
    for seed in range(3):
        model, src, lengths = model_and_batch(cell, input_feeding, seed)
        greedy, _ = greedy_search(model, src, lengths, max_length_ratio=1.5, max_length_offset=2, **IDS)
        beam = beam_search(model, src, lengths, beam_size=1, max_length_ratio=1.5, max_length_offset=2, **IDS)
        assert beam == greedy
        assert any(len(h) < limit for h, limit in zip(greedy, max_lengths(lengths, 1.5, 2), strict=True))


def test_translations_respect_the_maximum_length_and_contain_no_eos() -> None:
    model, src, lengths = model_and_batch()
    limits = max_lengths(lengths, 1.0, 1)
    for hyps in (
        greedy_search(model, src, lengths, max_length_ratio=1.0, max_length_offset=1, **IDS)[0],
        beam_search(model, src, lengths, beam_size=4, max_length_ratio=1.0, max_length_offset=1, **IDS),
    ):
        assert len(hyps) == src.size(0)
        assert all(len(h) <= n and EOS not in h for h, n in zip(hyps, limits, strict=True))


def test_wider_beam_finds_translations_at_least_as_likely_as_greedy() -> None:
    model, src, lengths = model_and_batch(seed=1, eos_boost=0.0)

    def log_prob(b: int, hyp: list[int]) -> float:
        tgt = torch.tensor([[2, *hyp]])
        out = torch.tensor([[*hyp, EOS]])
        logits, _ = model(src[b : b + 1, : int(lengths[b])], lengths[b : b + 1], tgt)
        return float(torch.log_softmax(logits, -1).gather(-1, out[..., None]).sum())

    greedy, _ = greedy_search(model, src, lengths, max_length_ratio=3.0, max_length_offset=5, **IDS)
    beam = beam_search(model, src, lengths, beam_size=8, length_penalty_alpha=0.0, max_length_ratio=3.0,
                       max_length_offset=5, **IDS)  # fmt: skip
    with torch.no_grad():
        gains = [log_prob(b, beam[b]) - log_prob(b, greedy[b]) for b in range(src.size(0))]
    # beam search is not exact (a finished beam stops the search), so allow a sliver, but on the whole it must win
    assert min(gains) > -0.05 and sum(gains) > 0.5


@pytest.mark.parametrize("input_feeding", [True, False])
def test_search_steps_match_the_teacher_forced_pass(input_feeding: bool) -> None:
    """The logits of step-by-step decoding (search) equal those of forward() on the same target prefix."""
    model, src, lengths = model_and_batch(input_feeding=input_feeding)
    tgt_in = torch.randint(4, 40, (6, 5))
    tgt_in[:, 0] = 2
    with torch.no_grad():
        logits, _ = model(src, lengths, tgt_in)
        memory, state = model.start(src, lengths)
        steps = []
        for t in range(tgt_in.size(1)):
            step_logits, state, _ = model.step(tgt_in[:, t], memory, state)
            steps.append(step_logits)
    assert torch.allclose(torch.stack(steps, 1), logits, atol=1e-5)


def test_scheduled_sampling_runs_and_differs_from_teacher_forcing() -> None:
    model, src, lengths = model_and_batch()
    model.train()
    tgt_in = torch.randint(4, 40, (6, 5))
    torch.manual_seed(0)
    forced, _ = model(src, lengths, tgt_in, teacher_forcing=1.0)
    torch.manual_seed(0)
    sampled, _ = model(src, lengths, tgt_in, teacher_forcing=0.0)
    assert sampled.shape == forced.shape
    assert torch.allclose(sampled[:, 0], forced[:, 0])  # the first step always reads BOS
    assert not torch.allclose(sampled[:, 1:], forced[:, 1:])
