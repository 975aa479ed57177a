"""Resuming an LM run mid-epoch continues exactly: the data position and the carried hidden state travel in the
checkpoint."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_cli, run_dir_of

ARGS = [
    "--config", "configs/debug/lm.yaml", "--trainer.max_steps", "8", "--trainer.limit_val_batches", "0",
    "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false", "--checkpoint.monitor", "null",
]  # fmt: skip


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def first_run(tmp_path, runs):
    run = run_dir_of(run_cli("pipeline.fit", *ARGS, "--runs_dir", str(runs), tmp_path=tmp_path))
    ckpts = run / "checkpoints"
    straight = weights(ckpts / "step00008.ckpt")
    middle = torch.load(ckpts / "step00004.ckpt", weights_only=True)
    assert middle["tbptt_state"][0].shape == (1, 2, 8, 32)  # (ranks, layers, B, H): h of the LSTM
    assert middle["callbacks"]["ResumeState"]["consumed"] == 4

    elsewhere = tmp_path / "ckpts"  # outside the run: each resume gets a run directory of its own
    elsewhere.mkdir()
    torch.save(middle, elsewhere / "step4.ckpt")
    middle["tbptt_state"] = None  # a copy without the carried state: the resumed run starts it from zeros
    torch.save(middle, elsewhere / "nostate.ckpt")

    def resume(ckpt: str) -> dict[str, torch.Tensor]:
        proc = run_cli("pipeline.fit", *ARGS, "--runs_dir", str(runs), "--ckpt_path", str(elsewhere / ckpt),
                       tmp_path=tmp_path)  # fmt: skip
        assert run_dir_of(proc) != run
        return weights(run_dir_of(proc) / "checkpoints" / "step00008.ckpt")

    return straight, resume


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, runs):
    straight, resume = first_run(tmp_path, runs)
    resumed = resume("step4.ckpt")
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_without_the_carried_state_a_resumed_run_ends_elsewhere(tmp_path, runs):
    straight, resume = first_run(tmp_path, runs)
    cold = resume("nostate.ckpt")
    assert any(not torch.equal(cold[n], straight[n]) for n in straight)
