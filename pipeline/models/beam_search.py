"""Batched greedy and beam search for any step-wise decoder (plain torch, no Lightning).

A decoder is anything with::

    start(src (B, S), src_lengths (B,)) -> (memory, state)     memory: fixed per sentence; state: per hypothesis
    step(tokens (N,), memory, state)    -> (logits (N, V), state, attention (N, S))

where ``memory`` and ``state`` are (nested dicts/tuples of) tensors with the batch on dim 0, so that hypotheses can
be picked with one ``index_select`` (see :func:`select_rows`). :class:`pipeline.models.seq2seq.Seq2Seq` is one.

Beam search keeps K hypotheses per sentence in one (B*K)-row batch; beams of sentence b live in rows b*K..b*K+K-1,
so the memory is expanded once and only the per-hypothesis state is reordered each step. Each step ranks the K*V
continuations of a sentence, takes the best 2K; a candidate that ends in EOS and ranks within the top K becomes a
finished hypothesis (fairseq's rule), the best K others continue. A sentence is done when it has K finished
hypotheses or reaches its maximum length; its best finished hypothesis by length-normalised score wins. With K = 1
this is exactly greedy decoding: the only kept candidate is the arg-max, and an EOS arg-max finishes the sentence.

Length penalty (Wu et al., 2016): score = log P(y) / ((5 + |y|) / 6) ** alpha, |y| counting the EOS; alpha = 0 ranks
by raw log-probability, larger alpha favours longer translations. Maximum length per sentence:
``ceil(max_length_ratio * source length) + max_length_offset`` target tokens.

The begin- and end-of-sentence ids (``bos``, ``eos``) are arguments: they belong to the target vocabulary, which
the caller (the task, from its data) knows and a model does not.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def select_rows(tree: Any, index: torch.Tensor) -> Any:
    """Pick rows ``index`` (dim 0) of every tensor in a nested dict/tuple/list (None stays None)."""
    if tree is None:
        return None
    if isinstance(tree, torch.Tensor):
        return tree.index_select(0, index)
    if isinstance(tree, dict):
        return {k: select_rows(v, index) for k, v in tree.items()}
    return type(tree)(select_rows(v, index) for v in tree)


def max_lengths(src_lengths: torch.Tensor, ratio: float, offset: int) -> list[int]:
    """Per-sentence maximum target length (tokens, EOS excluded)."""
    return [max(1, math.ceil(ratio * int(n)) + offset) for n in src_lengths.tolist()]


def length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def greedy_search(
    model,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    max_length_ratio: float = 1.5,
    max_length_offset: int = 5,
    return_attention: bool = False,
    *,
    bos: int,
    eos: int,
) -> tuple[list[list[int]], list[torch.Tensor] | None]:
    """Arg-max decoding of a batch: src (B, S) -> B token lists (EOS stripped) and, optionally, attention (T_b, S_b)."""
    memory, state = model.start(src, src_lengths)
    batch = src.size(0)
    limits = max_lengths(src_lengths, max_length_ratio, max_length_offset)
    limit_t = torch.tensor(limits, device=src.device)
    tokens = torch.full((batch,), bos, dtype=torch.long, device=src.device)
    done = torch.zeros(batch, dtype=torch.bool, device=src.device)
    steps, weights = [], []
    for t in range(max(limits)):
        logits, state, attn = model.step(tokens, memory, state)
        tokens = torch.log_softmax(logits.float(), dim=-1).argmax(-1)  # (B,)
        steps.append(tokens)
        if return_attention:
            weights.append(attn.float())
        done |= (tokens == eos) | (t + 1 >= limit_t)
        if bool(done.all()):
            break
    out = torch.stack(steps, 1).tolist()  # (B, T)
    hyps = []
    for b, row in enumerate(out):
        row = row[: limits[b]]
        hyps.append(row[: row.index(eos)] if eos in row else row)
    if not return_attention:
        return hyps, None
    attn_all = torch.stack(weights, 1)  # (B, T, S)
    lengths = src_lengths.tolist()
    return hyps, [attn_all[b, : len(h) + 1, : lengths[b]].cpu() for b, h in enumerate(hyps)]


@torch.no_grad()
def beam_search(
    model,
    src: torch.Tensor,
    src_lengths: torch.Tensor,
    beam_size: int = 5,
    length_penalty_alpha: float = 0.6,
    max_length_ratio: float = 1.5,
    max_length_offset: int = 5,
    *,
    bos: int,
    eos: int,
) -> list[list[int]]:
    """Beam search of a batch: src (B, S) -> the best hypothesis per sentence as a token list (EOS stripped)."""
    batch, k, device = src.size(0), beam_size, src.device
    limits = max_lengths(src_lengths, max_length_ratio, max_length_offset)
    memory, state = model.start(src, src_lengths)
    expand = torch.arange(batch, device=device).repeat_interleave(k)  # row b*K + j belongs to sentence b
    memory, state = select_rows(memory, expand), select_rows(state, expand)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # the first step expands one beam per sentence, not K identical ones
    tokens = torch.full((batch * k,), bos, dtype=torch.long, device=device)
    history: list[list[int]] = [[] for _ in range(batch * k)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    for t in range(max(limits)):
        logits, state, _ = model.step(tokens, memory, state)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V)
        vocab = logp.size(-1)
        cand = (scores.unsqueeze(-1) + logp.view(batch, k, vocab)).view(batch, k * vocab)
        top_scores, top_idx = cand.topk(2 * k, dim=-1)  # (B, 2K), best first
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        rows, next_tokens, next_scores = [], [], []
        for b in range(batch):
            keep: list[tuple[int, int, float]] = []  # (row, token, score)
            if not done[b]:
                last = t + 1 >= limits[b]
                for rank, (score, idx) in enumerate(zip(top_scores[b], top_idx[b], strict=True)):
                    if score == float("-inf"):
                        break
                    row, token = b * k + idx // vocab, idx % vocab
                    if token == eos:
                        if rank < k:
                            hyp = history[row]
                            finished[b].append(
                                (score / length_penalty(len(hyp) + 1, length_penalty_alpha), hyp)
                            )
                    elif last:  # out of length: the continuation is a finished hypothesis as it stands
                        if len(keep) < k:
                            hyp = [*history[row], token]
                            finished[b].append((score / length_penalty(len(hyp), length_penalty_alpha), hyp))
                            keep.append((row, token, score))
                    elif len(keep) < k:
                        keep.append((row, token, score))
                    if len(keep) >= k and rank >= k - 1:
                        break
                if len(finished[b]) >= k or last or not keep:
                    done[b] = True
            if done[b]:  # keep the rows busy with a dead beam; its score stays -inf
                keep = [(b * k, eos, float("-inf"))] * k
            keep += [(keep[0][0], eos, float("-inf"))] * (k - len(keep))
            for row, token, score in keep:
                rows.append(row)
                next_tokens.append(token)
                next_scores.append(score)
        if all(done):
            break
        index = torch.tensor(rows, device=device)
        history = [[*history[r], tok] for r, tok in zip(rows, next_tokens, strict=True)]
        tokens = torch.tensor(next_tokens, device=device)
        scores = torch.tensor(next_scores, device=device).view(batch, k)
        state = select_rows(state, index)
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]
