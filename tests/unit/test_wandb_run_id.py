"""All ranks of a job must agree on one W&B id, or rank 0 logs under an id that a requeued job will not find."""

from __future__ import annotations

import multiprocessing as mp

from pipeline.tracking import wandb_run_id


def _race(run_dir: str, barrier, out) -> None:
    barrier.wait()  # every process looks for the file at the same moment, as the ranks of a SLURM job do
    out.put(wandb_run_id(run_dir))


def test_ranks_starting_together_share_the_id_written_to_the_run(tmp_path):
    ctx = mp.get_context("spawn")
    n = 6
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    ids = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert len(set(ids)) == 1
    assert (tmp_path / "wandb_id").read_text() == ids[0]
    assert [p.name for p in tmp_path.iterdir()] == ["wandb_id"]  # no drafts left behind


def test_a_resumed_run_keeps_its_id(tmp_path):
    first = wandb_run_id(tmp_path)
    assert wandb_run_id(tmp_path) == first and len(first) == 8
