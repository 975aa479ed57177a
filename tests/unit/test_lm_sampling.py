"""Sampling one token at a time: temperature -> 0 is greedy, a seed reproduces a sample, top-k / top-p filter."""

from __future__ import annotations

import torch

from pipeline.models.language_model import RNNLanguageModel
from pipeline.models.sampling import choose, filter_logits, generate


def net() -> RNNLanguageModel:
    torch.manual_seed(0)
    model = RNNLanguageModel(30, embedding_dim=8, hidden_size=32, num_layers=1, cell="lstm", dropout=0.0)
    return model.eval()


def test_temperature_towards_zero_samples_the_greedy_text():
    model = net()
    greedy = generate(model, [1, 2, 3], 60, greedy=True)
    for seed in range(3):
        assert generate(model, [1, 2, 3], 60, temperature=1e-6, seed=seed) == greedy
    assert generate(model, [1, 2, 3], 60, temperature=0.0, seed=0) == greedy
    assert generate(model, [1, 2, 3], 60, temperature=1.0, seed=0) != greedy  # a real temperature does sample


def test_a_fixed_seed_reproduces_a_sample_and_leaves_the_global_rng_alone():
    model = net()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = generate(model, [5], 80, temperature=1.0, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = generate(model, [5], 80, temperature=1.0, seed=7)
    c = generate(model, [5], 80, temperature=1.0, seed=8)
    assert a == b and a != c and len(a) == 80


def test_top_k_and_top_p_keep_only_the_likely_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    keep = lambda out: (out > float("-inf")).squeeze(0).tolist()  # noqa: E731
    assert keep(filter_logits(logits, top_k=2)) == [True, True, False, False]
    assert keep(filter_logits(logits, top_p=0.5)) == [True, False, False, False]
    assert keep(filter_logits(logits, top_p=0.7)) == [True, True, False, False]
    assert keep(filter_logits(logits, top_p=0.9)) == [True, True, True, False]
    assert keep(filter_logits(logits[:, [3, 1, 0, 2]], top_p=0.7)) == [False, True, True, False]  # order-free
    g = torch.Generator().manual_seed(0)
    picks = {int(choose(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert picks == {0, 1}
    assert int(choose(logits, 1.0, top_k=1, generator=g)) == 0
