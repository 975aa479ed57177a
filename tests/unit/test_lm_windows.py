"""Contiguous streams cut into bptt windows: continuity, equal shapes, resume skipping, per-epoch offsets."""

from __future__ import annotations

import pytest
import torch

from pipeline.data.faults import DataError
from pipeline.data.windows import WindowLoader, layout


def corpus(n: int = 1000) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int32)  # token i == its position: continuity is visible in the values


def batches(loader: WindowLoader) -> list[dict]:
    return list(loader)


def test_consecutive_windows_continue_the_same_streams():
    loader = WindowLoader(corpus(), batch_size=4, bptt=10, epoch_fn=lambda: 0, train=True)
    out = batches(loader)
    assert len(out) == len(loader) > 2
    for a, b in zip(out, out[1:], strict=False):
        # the next window starts where this one ended
        assert torch.equal(a["targets"][:, -1], b["tokens"][:, 0])
    for b in out:
        # equal batches: the carried state always fits
        assert b["tokens"].shape == b["targets"].shape == (4, 10)
        assert torch.equal(b["targets"], b["tokens"] + 1)  # targets are the next token
    rows = torch.cat([b["tokens"] for b in out], dim=1)  # (B, n*bptt): each row one contiguous piece of text
    assert torch.equal(rows[:, 1:] - rows[:, :-1], torch.ones_like(rows[:, 1:]))
    assert [b["reset"] for b in out] == [True] + [False] * (len(out) - 1)
    assert [b["position"] for b in out] == [(0, k) for k in range(1, len(out) + 1)]


def test_training_offset_moves_each_epoch_but_the_batch_count_does_not():
    epoch = [0]
    loader = WindowLoader(corpus(), batch_size=4, bptt=10, epoch_fn=lambda: epoch[0], train=True, seed=3)
    firsts, counts = set(), set()
    for e in range(6):
        epoch[0] = e
        out = batches(loader)
        counts.add(len(out))
        firsts.add(int(out[0]["tokens"][0, 0]))
    assert counts == {len(loader)}
    assert len(firsts) > 1  # window edges fall elsewhere from epoch to epoch
    assert loader.unused() == 1000 - 4 * len(loader) * 10  # reported, not silently dropped


def test_resume_skips_exactly_the_consumed_batches():
    full = batches(WindowLoader(corpus(), batch_size=4, bptt=10, epoch_fn=lambda: 2, train=True))
    resumed = WindowLoader(corpus(), batch_size=4, bptt=10, epoch_fn=lambda: 2, train=True)
    resumed.resume_at = (2, 5)
    rest = batches(resumed)
    assert len(rest) == len(full) - 5
    assert rest[0]["position"] == (2, 6)
    for a, b in zip(full[5:], rest, strict=True):
        assert torch.equal(a["tokens"], b["tokens"]) and a["position"] == b["position"]
    assert len(batches(resumed)) == len(full)  # the skip applies once, to the resumed epoch only


def test_validation_scores_nearly_every_token_with_a_shorter_last_window():
    loader = WindowLoader(corpus(1003), batch_size=4, bptt=16, epoch_fn=lambda: 0, train=False)
    out = batches(loader)
    assert out[-1]["tokens"].size(1) < 16 and all(b["tokens"].size(1) == 16 for b in out[:-1])
    scored = sum(b["n_tokens"] for b in out)
    assert scored == 4 * (1003 // 4 - 1)  # every token but the first of each stream and the remainder
    assert loader.unused() == 1003 - scored
    assert "position" not in out[0]


def test_ranks_get_disjoint_contiguous_segments():
    world, b = 2, 3
    grid = layout(corpus(), world * b)  # what WindowLoader slices per rank
    rank0, rank1 = grid[:b], grid[b:]
    assert set(rank0.flatten().tolist()).isdisjoint(rank1.flatten().tolist())
    assert rank0.shape == rank1.shape


def test_a_corpus_too_small_for_the_streams_is_a_clear_error():
    with pytest.raises(DataError, match="too few for 1 process"):
        WindowLoader(corpus(50), batch_size=8, bptt=10, epoch_fn=lambda: 0, train=True)
