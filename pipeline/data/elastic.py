"""Resume a checkpoint's epoch on another layout: W ranks x K workers -> W' x K', every example exactly once.

The checkpoint holds, per old node (rank*K + worker), its work (segments of shards), the bounds of the buffer it was
in and how many of that buffer's batches were consumed. What is left of the epoch is then, per old node::

    old node n:  [ ...consumed... | partial buffer: buf ──── end | rest of its segments ──────────────── ]
                                    (done of its batches yielded)  (never read)

- the partial buffer: read again from ``buf`` to ``end`` and cut with the old node's shuffle state, it gives the same
  batches;
  the first ``done`` were trained on, the others were not. It moves whole to one new node, as a "fixed" flush;
- the rest: segments ``(shard, from, to)``, dealt out round robin to the new nodes.

Each new node first finishes its fixed flushes, then streams its segments through fresh buffers seeded by the new
layout. Weights cannot match a run on the old layout (other batches), but the examples of the epoch are each trained
on exactly once. Shards keep the old plan (``plan_nodes``) until the epoch ends; the next epoch plans for W' x K'.
"""

from __future__ import annotations

from typing import Any

from pipeline.data.faults import DataError


def _segments(work: list, start: tuple, end: tuple) -> list[tuple]:
    """The segments of ``work`` from position ``start`` to position ``end``, trimmed to those offsets."""
    from pipeline.data.stream import position

    (i, a), (j, b) = position(start), position(end)
    out = []
    for s in range(i, j + 1):
        shard, frm, to = work[s]
        out.append((shard, a if s == i and a is not None else frm, b if s == j else to))
    return out


def _left_over(stream: Any, node: int, nodes: int, state: Any, ended: bool) -> tuple[list, list]:
    """(partial flushes, remaining segments) of one old node."""
    from pipeline.data.stream import canonical_work, position, segments

    if ended:
        return [], []
    state = state or {}
    plan_nodes = state.get("plan_nodes", nodes)
    work = segments(state.get("work") or []) or canonical_work(
        len(stream.reader.plan(plan_nodes)), stream.seed, stream.epoch, node, plan_nodes, stream.shuffle
    )
    fixed = state.get("fixed") or []
    if not state:
        return [], list(work)
    flush, done, of = state["flush"], state["done"], state["of"]
    partials = []
    if done < of:  # the shuffle state at the start of that buffer cuts the same batches again
        partials.append((_segments(work, state["buf"], state["end"]), state["rng"], done))
    for start, end, key, skip in fixed[flush + 1 :]:  # not begun here, but begun (skip batches) before
        partials.append((_segments(work, start, end), key, skip))
    rest_from = position(fixed[-1][1] if flush + 1 < len(fixed) else state["end"])
    i, offset = rest_from
    rest = []
    if i < len(work):
        shard, frm, to = work[i]
        rest.append((shard, offset if offset is not None else frm, to))
        rest += work[i + 1 :]
    return partials, rest


def rank_states(data: dict, stream: Any, world: int, workers: int, consumed: int) -> list[dict]:
    """Every new rank's starting state, from the checkpoint's ``data`` (``{"layout": [W, K], "ranks": [...]}``)."""
    old_world, old_workers = data["layout"]
    if (old_world, old_workers) == (world, workers):
        return data["ranks"]
    if len(data["ranks"]) != old_world:
        raise DataError(
            f"the checkpoint's data position covers {len(data['ranks'])} of its {old_world} ranks x {old_workers} "
            f"workers, so it cannot be resumed on {world} ranks x {workers} workers; resume on {old_world} x "
            f"{old_workers}."
        )
    old_nodes = old_world * old_workers
    plan_nodes = old_nodes
    partials: list = []
    rest: list = []
    for r, rank in enumerate(data["ranks"]):
        for k in range(old_workers):
            state = rank["workers"][k]
            plan_nodes = (state or {}).get("plan_nodes", plan_nodes)
            p, s = _left_over(stream, r * old_workers + k, old_nodes, state, k in rank["ended"])
            partials += p
            rest += s
    # dealt out with the rank varying fastest (rank 0 worker 0, rank 1 worker 0, ...), partial buffers first and
    # the segments after them, so that the ranks get equal shares even when little is left
    deal = [r * workers + k for k in range(workers) for r in range(world)]
    mine: dict[int, tuple[list, list]] = {m: ([], []) for m in deal}
    for i, item in enumerate(partials):
        mine[deal[i % len(deal)]][0].append(item)
    for i, item in enumerate(rest):
        mine[deal[(len(partials) + i) % len(deal)]][1].append(item)
    out = []
    for r in range(world):
        states = []
        for k in range(workers):
            m = r * workers + k
            work: list = []
            fixed: list = []
            for segments, key, skip in mine[m][0]:
                base = len(work)
                work += segments
                fixed.append(((base, None), (len(work) - 1, segments[-1][2]), key, skip))
            work += mine[m][1]
            states.append(
                {
                    "tag": f"{old_world}x{old_workers}>{world}x{workers}@{consumed}/{m}",
                    "plan_nodes": plan_nodes,
                    "work": work,
                    "fixed": fixed,
                    "buf": (0, None),
                    "end": (0, None),
                    "flush": -1,
                    "done": 0,
                    "of": 0,
                    "faults": {},
                }
            )
        out.append({"next": 0, "workers": states, "ended": [], "last": None})
    return out
