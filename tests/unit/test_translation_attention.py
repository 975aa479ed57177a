"""Attention masks pads: weights sum to 1 over the real source positions and are exactly 0 on pads."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.attention import Attention, source_mask
from pipeline.models.seq2seq import Seq2Seq


@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
def test_weights_sum_to_one_over_real_positions_and_zero_on_pads(kind: str) -> None:
    torch.manual_seed(0)
    attn = Attention(kind, query_size=8, memory_size=8)
    lengths = torch.tensor([5, 2, 1])
    memory = torch.randn(3, 5, 8)
    memory[1, 2:] = 1e3  # huge values on pads must not leak into the weights or the context
    mask = source_mask(lengths, 5)
    context, weights = attn(torch.randn(3, 4, 8), attn.keys(memory), memory, mask)  # 4 query steps
    assert weights.shape == (3, 4, 5) and context.shape == (3, 4, 8)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4), atol=1e-6)
    assert (weights[~mask[:, None, :].expand_as(weights)] == 0).all()
    assert (weights[mask[:, None, :].expand_as(weights)] > 0).all()
    assert context[1].abs().max() < 1e2  # the pads' 1e3 did not get in


def test_dot_attention_refuses_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="dot attention needs the decoder size"):
        Attention("dot", query_size=8, memory_size=6)


@pytest.mark.parametrize("input_feeding", [True, False])
def test_model_attention_is_masked_for_padded_batches(input_feeding: bool) -> None:
    torch.manual_seed(0)
    model = Seq2Seq(30, 30, embedding_dim=8, hidden_size=12, input_feeding=input_feeding).eval()
    src = torch.randint(4, 30, (3, 6))
    lengths = torch.tensor([6, 3, 1])
    src[1, 3:] = 0
    src[2, 1:] = 0
    _, weights = model(src, lengths, torch.randint(4, 30, (3, 4)))  # (B, T, S)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4), atol=1e-5)
    assert (weights[1, :, 3:] == 0).all() and (weights[2, :, 1:] == 0).all()


def test_heatmap_image_draws_more_attention_darker() -> None:
    from pipeline.tasks.heatmap import CELL, attention_image

    weights = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])  # (T=2, S=3)
    image = attention_image(weights, ["\u2581A", "\u2581dog", "</s>"], ["\u2581Ein", "\u2581Hund"])
    width, height = image.size
    left, top = width - 4 - 3 * CELL, height - 4 - 2 * CELL  # the grid sits in the bottom-right corner

    def brightness(i: int, j: int) -> int:
        return sum(image.getpixel((left + j * CELL + CELL // 2, top + i * CELL + CELL // 2)))

    assert brightness(0, 0) < brightness(0, 1) < brightness(0, 2)
    assert brightness(1, 2) < brightness(1, 1) < brightness(1, 0)
