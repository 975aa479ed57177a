"""Length-bucketed batches inside a shuffle buffer, by example count or by token budget.

Examples stream in; every ``buffer_size`` of them are shuffled, sorted by length (the shuffle breaks ties randomly),
cut into batches, and the batches are shuffled before they are yielded. Neighbours in a batch then have similar
lengths, so padding stays small, while the order of batches stays random. Everything is driven by the ``rng`` passed
in, so a (seed, epoch, rank, worker) tuple fixes the batches exactly: that is what makes resume exact.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def cut_batches(
    items: list[T], length: Callable[[T], int], batch_size: int | None, max_tokens: int | None
) -> list[list[T]]:
    """Cut length-sorted ``items`` into batches of ``batch_size`` items or at most ``max_tokens`` padded tokens.

    With ``max_tokens`` a batch holds as many items as fit ``len(batch) * longest <= max_tokens`` (one item at least,
    so an item longer than the budget still forms its own batch); ``batch_size`` then caps the count.
    """
    batches: list[list[T]] = []
    current: list[T] = []
    longest = 0
    for item in items:
        n = length(item)
        grown = max(longest, n)
        too_many = batch_size is not None and len(current) >= batch_size
        too_big = max_tokens is not None and current and grown * (len(current) + 1) > max_tokens
        if current and (too_many or too_big):
            batches.append(current)
            current, grown = [], n
        current.append(item)
        longest = grown
    if current:
        batches.append(current)
    return batches


def bucket_batches(
    items: Iterable[T],
    length: Callable[[T], int],
    rng: random.Random,
    buffer_size: int = 10_000,
    batch_size: int | None = 64,
    max_tokens: int | None = None,
    shuffle: bool = True,
) -> Iterator[list[T]]:
    """Yield length-bucketed batches from a stream, ``buffer_size`` items at a time.

    ``shuffle=False`` (validation) keeps batches in order of the sorted buffer, which is deterministic as well.
    """
    if batch_size is None and max_tokens is None:
        raise ValueError("set data.batch_size or data.max_tokens (or both)")
    buffer: list[T] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            yield from flush_batches(buffer, length, rng, batch_size, max_tokens, shuffle)
            buffer = []
    if buffer:
        yield from flush_batches(buffer, length, rng, batch_size, max_tokens, shuffle)


def flush_batches(
    buffer: list[T],
    length: Callable[[T], int],
    rng: random.Random,
    batch_size: int | None,
    max_tokens: int | None,
    shuffle: bool,
) -> list[list[T]]:
    """The batches of one full buffer: shuffle, sort by length (stable, so ties stay shuffled), cut, shuffle."""
    if shuffle:
        rng.shuffle(buffer)
    buffer.sort(key=length)
    batches = cut_batches(buffer, length, batch_size, max_tokens)
    if shuffle:
        rng.shuffle(batches)
    return batches
