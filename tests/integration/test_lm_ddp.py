"""Under DDP (two real processes, gloo) each rank reads its own contiguous segments, in the same number of batches."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, cli_env, run_cli, run_dir_of

SCRIPT = r"""
import json, os, sys
import torch, torch.distributed as dist, torch.multiprocessing as mp
from pipeline.data.windows import WindowLoader

def work(rank, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ids = torch.arange(10_007, dtype=torch.int32)  # token value == position in the corpus
    loader = WindowLoader(ids, batch_size=3, bptt=50, epoch_fn=lambda: 1, train=True, seed=0)
    batches = list(loader)
    rows = torch.cat([b["tokens"] for b in batches], dim=1)  # (B, n*bptt)
    json.dump({"n": len(batches), "shapes": sorted({tuple(b["tokens"].shape) for b in batches}),
               "starts": rows[:, 0].tolist(), "seen": sorted(set(rows.flatten().tolist())),
               "contiguous": bool((rows[:, 1:] - rows[:, :-1] == 1).all())},
              open(os.path.join(out, f"{rank}.json"), "w"))
    dist.destroy_process_group()

mp.start_processes(work, args=(sys.argv[1], sys.argv[2]), nprocs=2, start_method="fork")
"""


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_ranks_read_disjoint_contiguous_streams_in_equal_batches(tmp_path):
    subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), free_port()], cwd=ROOT, env=cli_env(tmp_path),
                   check=True, timeout=120)  # fmt: skip
    r0, r1 = (json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1))
    assert r0["n"] == r1["n"] > 0 and r0["shapes"] == r1["shapes"] == [[3, 50]]
    assert r0["contiguous"] and r1["contiguous"]
    assert set(r0["seen"]).isdisjoint(r1["seen"])
    assert max(r0["starts"]) < min(
        r1["starts"]
    )  # rank 0 reads the earlier part of the text, rank 1 the later


@pytest.mark.slow
def test_a_two_process_run_keeps_every_ranks_state_and_resumes(tmp_path, runs):
    args = ["--config", "configs/debug/lm.yaml", "--runs_dir", str(runs), "--trainer.devices", "2",
            "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.max_steps", "8",
            "--trainer.logger", "false", "--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "4"]  # fmt: skip
    run = run_dir_of(run_cli("pipeline.fit", *args, tmp_path=tmp_path))
    ckpt = torch.load(run / "checkpoints" / "step00004.ckpt", weights_only=True)
    h, c = ckpt["tbptt_state"]
    assert h.shape == c.shape == (2, 2, 8, 32)  # (ranks, layers, B, H)
    assert not torch.equal(h[0], h[1])  # each rank carried its own streams
    resumed = run_cli(
        "pipeline.fit", *args, "--trainer.max_steps", "12", "--ckpt_path", "last", tmp_path=tmp_path
    )
    assert "resuming from" in resumed.stderr and run_dir_of(resumed) == run
