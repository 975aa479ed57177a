"""Two real processes (DDP on CPU with gloo): disjoint data that covers the epoch, identical weights."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import cli_env, run_cli

DEBUG = "configs/debug/sentiment.yaml"


@pytest.mark.parametrize(
    "extra",
    [[], ["--model.init_args.adversarial_eps", "1.0"]],  # two backward passes, each all-reduced, per step
    ids=["plain", "adversarial"],
)
def test_two_ranks_see_disjoint_examples_covering_the_epoch_and_keep_identical_weights(tmp_path, runs, extra):
    trace = tmp_path / "trace"
    env = cli_env(tmp_path, PIPELINE_TRACE=str(trace))
    run_cli(
        "pipeline.fit",
        "--config",
        DEBUG,
        "--runs_dir",
        str(runs),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_epochs",
        "1",
        "--trainer.max_steps",
        "-1",
        "--data.init_args.max_tokens",
        "300",
        *extra,
        tmp_path=tmp_path,
        env=env,
    )
    ids = [
        [line.split("\t")[1] for line in (trace / f"ids-rank{r}.tsv").read_text().splitlines()]
        for r in (0, 1)
    ]
    assert len(ids[0]) == len(set(ids[0])) and len(ids[1]) == len(set(ids[1]))
    assert not set(ids[0]) & set(ids[1])  # disjoint
    assert len(ids[0]) + len(ids[1]) == 872  # together: every dev example once
    w0 = torch.load(trace / "weights-rank0.pt", weights_only=True)
    w1 = torch.load(trace / "weights-rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
