import random

from pipeline.data.batching import bucket_batches, cut_batches


def test_cut_batches_respects_token_budget_and_count():
    items = sorted([3, 5, 5, 8, 9, 20, 21, 40])
    batches = cut_batches(items, length=lambda n: n, batch_size=3, max_tokens=45)
    assert sum(len(b) for b in batches) == len(items)  # nothing dropped
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or max(b) * len(b) <= 45


def test_an_item_longer_than_the_budget_gets_its_own_batch():
    assert cut_batches([2, 100], length=lambda n: n, batch_size=None, max_tokens=50) == [[2], [100]]


def test_bucketing_reduces_padding_and_keeps_every_item():
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(2000)]

    def padding(batches):
        padded = sum(max(b) * len(b) for b in batches)
        return 1 - sum(sum(b) for b in batches) / padded

    bucketed = list(
        bucket_batches(lengths, length=lambda n: n, rng=random.Random(1), buffer_size=500, batch_size=32)
    )
    naive = [lengths[i : i + 32] for i in range(0, len(lengths), 32)]
    assert sorted(x for b in bucketed for x in b) == sorted(lengths)
    assert padding(bucketed) < 0.1 < padding(naive)


def test_same_seed_same_batches_other_seed_other_order():
    items = list(range(300))

    def run(seed):
        return list(
            bucket_batches(
                items, length=lambda n: n % 17, rng=random.Random(seed), buffer_size=100, batch_size=8
            )
        )

    assert run(3) == run(3)
    assert run(3) != run(4)
