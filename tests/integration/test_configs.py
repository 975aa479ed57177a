"""Every config under configs/ loads and builds: model, data module (tokenizer included) and trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from pipeline.cli import PipelineCLI
from tests.conftest import cli_env, run_cli, run_dir_of

ROOT = Path(__file__).resolve().parents[2]
#: Configs whose data a test generates first; they are built and trained by that test instead.
GENERATED_DATA = {"configs/debug/translation_reverse.yaml": "tests/integration/test_translation_cli.py"}
CONFIGS = sorted(
    str(p.relative_to(ROOT))
    for p in (ROOT / "configs").rglob("*.yaml")
    if str(p.relative_to(ROOT)) not in GENERATED_DATA
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_there_is_a_config_per_task():
    tasks = {Path(c).parts[1] for c in CONFIGS}
    assert {"sentiment", "debug"} <= tasks


@pytest.mark.parametrize("config", CONFIGS)
def test_config_builds(config, cache, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(cache))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cli = PipelineCLI(args=["--config", str(ROOT / config)], mode="evaluate")
    assert isinstance(cli.model, pl.LightningModule)
    assert isinstance(cli.datamodule, pl.LightningDataModule)
    assert isinstance(cli.trainer, pl.Trainer)
    network = getattr(cli.model, "network", None)
    assert isinstance(network, torch.nn.Module) and sum(p.numel() for p in network.parameters()) > 0


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """Data that configs name but the shared folder lacks: moving-digits clips, the reverse task."""
    from pipeline.data import moving_digits
    from tests.integration.test_translation_cli import write_reverse_task

    root = tmp_path_factory.mktemp("generated")
    for name, size in (
        ("moving_digits", "64"),
        ("moving_digits_debug", "36"),
    ):  # the sizes the configs decode
        moving_digits.main(
            [
                "--out",
                str(root / name),
                "--clips",
                "6",
                "--val_clips",
                "2",
                "--test_clips",
                "1",
                "--size",
                size,
            ]
        )
    write_reverse_task(root / "reverse_root", n_train=200, n_val=20)
    return {"clips": root, "reverse_root": root / "reverse_root"}


@pytest.mark.parametrize(
    "config", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
)
def test_config_trains_three_steps(config, cache, generated, tmp_path):
    """Every shipped config trains 3 real steps here, with its own precision and thread settings: a config tuned on
    one CPU (bf16 on AMX) must not crash on another (AVX2 only, where oneDNN has no bf16 LSTM)."""
    env = cli_env(tmp_path, PIPELINE_CACHE=str(cache))
    env.pop("OMP_NUM_THREADS")  # the config's own thread choice (--threads auto)
    extra: list[str] = []
    if "video/moving_digits" in config or config == "configs/debug/video.yaml":
        folder = "moving_digits_debug" if "debug" in config else "moving_digits"
        clips = generated["clips"] / folder
        extra = [f"--data.init_args.{s}.path={clips}/{s}/metadata.jsonl" for s in ("train", "val")]
    if config in GENERATED_DATA:
        env["PIPELINE_DATA"] = str(generated["reverse_root"])
    proc = run_cli(
        "pipeline.fit", "--config", config, "--runs_dir", str(tmp_path / "runs"), "--trainer.max_steps", "3",
        "--trainer.limit_val_batches", "2", "--trainer.logger", "false", *extra, env=env, tmp_path=tmp_path,
    )  # fmt: skip
    start = [ln for ln in proc.stderr.splitlines() if "[pipeline] precision " in ln]
    assert len(start) == 1 and "torch thread" in start[0] and "malloc" in start[0], proc.stderr[-2000:]
    ckpt = torch.load(run_dir_of(proc) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
