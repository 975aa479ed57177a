"""Every config under configs/ loads and builds: model, data module (tokenizer included) and trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from pipeline.cli import PipelineCLI

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
