"""The recurrent LM: shapes for every cell, the state in and out, weight tying."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.language_model import RNNLanguageModel


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_logits_for_every_step_and_a_state_to_carry(cell):
    model = RNNLanguageModel(20, embedding_dim=6, hidden_size=10, num_layers=3, cell=cell)
    logits, state = model(torch.randint(0, 20, (4, 7)))
    assert logits.shape == (4, 7, 20)
    h = state[0] if cell == "lstm" else state
    assert h.shape == (3, 4, 10)  # (layers, B, H)
    logits2, _ = model(torch.randint(0, 20, (4, 5)), state)
    assert logits2.shape == (4, 5, 20)


@pytest.mark.parametrize("embedding_dim", [10, 6])
def test_tied_weights_share_one_matrix(embedding_dim):
    model = RNNLanguageModel(20, embedding_dim=embedding_dim, hidden_size=10, tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert (model.projection is None) == (embedding_dim == 10)  # a projection H -> E when the sizes differ
    untied = RNNLanguageModel(20, embedding_dim=embedding_dim, hidden_size=10)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(model) < n(untied) or embedding_dim != 10
    assert model(torch.randint(0, 20, (2, 3)))[0].shape == (2, 3, 20)


def test_an_unknown_cell_is_one_sentence():
    with pytest.raises(ValueError, match="unknown cell type 'lstmm'"):
        RNNLanguageModel(20, cell="lstmm")


def test_locked_dropout_shares_one_mask_across_time_steps():
    from pipeline.models.language_model import locked_dropout

    x = torch.ones(4, 50, 8)
    out = locked_dropout(x, 0.5, training=True)
    assert torch.equal(out, out[:, :1].expand_as(out))  # every step of a sequence: the same mask
    assert set(out.unique().tolist()) <= {0.0, 2.0} and (out == 0).any()
    assert torch.equal(locked_dropout(x, 0.5, training=False), x)
    model = RNNLanguageModel(20, embedding_dim=6, hidden_size=10, dropout=0.5).eval()
    tokens = torch.randint(0, 20, (2, 9))
    assert torch.equal(model(tokens)[0], model(tokens)[0])  # no dropout outside training
