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
