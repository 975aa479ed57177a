"""Every translation config loads and builds: model, data (vocabularies linked into the network) and trainer."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import PipelineCLI
from pipeline.data.translation import TranslationData
from pipeline.models.seq2seq import Seq2Seq
from tests.integration.test_translation_cli import write_reverse_task

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "config",
    [
        "configs/translation/multi30k_en_de_gru_attn.yaml",
        "configs/debug/translation.yaml",
        "configs/debug/translation_reverse.yaml",
    ],
)
def test_config_builds(config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    # the CLI exports the run directory for DDP children; set it here so the test leaves no trace behind
    monkeypatch.setenv("PIPELINE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("PIPELINE_CKPT", raising=False)
    if "reverse" in config:
        monkeypatch.setenv("PIPELINE_DATA", str(write_reverse_task(tmp_path / "data", 50, 10)))
    cli = PipelineCLI(args=["--config", str(ROOT / config), "--runs_dir", str(tmp_path / "runs")], mode="fit")
    net, dm = cli.model.network, cli.datamodule
    assert isinstance(net, Seq2Seq) and isinstance(dm, TranslationData)
    assert net.src_embed.num_embeddings == dm.src_vocab_size
    assert net.generator.out_features == dm.tgt_vocab_size
    assert cli.trainer is not None
