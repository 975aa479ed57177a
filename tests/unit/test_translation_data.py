"""Parallel data: aligned reading with locations, the mismatch error, directions, vocabularies, token budgets."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pipeline.data.faults import DataError
from pipeline.data.parallel import ParallelSource
from pipeline.data.tokenizer import BOS, EOS, PAD, Tokenizer
from pipeline.data.translation import TranslationData

EN = ["A dog runs.", "Two men talk.", "", "A girl sings loudly.", "The cat sleeps."]
DE = ["Ein Hund rennt.", "Zwei Männer reden.", "Leer.", "Ein Mädchen singt laut.", "Die Katze schläft."]


def write(folder: Path, name: str, lines: list[str], gz: bool = False) -> Path:
    path = folder / name
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIPELINE_DATA", str(tmp_path))
    (tmp_path / "mt").mkdir()
    for split, n in (("train", 40), ("val", 1)):
        write(tmp_path / "mt", f"{split}.en.gz", EN * n, gz=True)
        write(tmp_path / "mt", f"{split}.de.gz", DE * n, gz=True)
    return tmp_path


def data(**kw) -> TranslationData:
    opts = {
        "train": ParallelSource(path="mt/{split}.{lang}.gz", split="train"),
        "val": ParallelSource(path="mt/{split}.{lang}.gz", split="val"),
        "tokenizer": Tokenizer(vocab_size=60, model_type="unigram"),
        "max_tokens": 64,
    }
    return TranslationData(**(opts | kw))


def test_pairs_stay_aligned_and_carry_the_source_file_and_line(corpus: Path) -> None:
    records = list(ParallelSource(path="mt/{split}.{lang}.gz", split="val").dataset(["en", "de"]))
    assert [(r["en"], r["de"]) for r in records if not r["_fault"]] == [
        (e, d) for e, d in zip(EN, DE, strict=True) if e
    ]
    assert records[2] == {"en": None, "de": None, "_where": "mt/val.en.gz:3", "_fault": "empty"}
    assert records[4]["_where"] == "mt/val.en.gz:5"


def test_files_with_different_line_counts_are_an_error_naming_both(corpus: Path) -> None:
    write(corpus / "mt", "bad.en", EN)
    write(corpus / "mt", "bad.de", DE[:4])
    dm = data(train=ParallelSource(path="mt/{split}.{lang}", split="bad"))
    with pytest.raises(DataError) as err:
        dm.src_vocab_size  # noqa: B018  (building the vocabulary checks the files first)
    assert str(err.value) == (
        "parallel files differ in length: mt/bad.en has 5 lines but mt/bad.de has 4; line i of one must translate "
        "line i of the other, so fix or re-export the shorter one."
    )


def test_a_missing_language_file_and_a_template_without_lang_are_clear_errors(corpus: Path) -> None:
    with pytest.raises(DataError, match=r"data file 'mt/train.fr.gz' not found"):
        data(direction="en->fr").check()
    with pytest.raises(DataError, match=r"not one template with a \{lang\} placeholder"):
        ParallelSource(path="mt/train.en.gz")
    with pytest.raises(DataError, match="is not of the form 'src->tgt'"):
        data(direction="en-de")


def test_direction_picks_source_and_target_and_batches_are_shaped_for_teacher_forcing(corpus: Path) -> None:
    dm = data(direction="de->en", max_tokens=None, batch_size=4, buffer_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["src_text"][0] in DE and batch["tgt_text"][0] in EN
    b = 0
    n_src = int(batch["src_lengths"][b])
    assert batch["src"][b, n_src - 1] == EOS and (batch["src"][b, n_src:] == PAD).all()
    assert batch["tgt_in"][b, 0] == BOS
    real = batch["tgt_out"][b][batch["tgt_out"][b] != PAD]
    assert real[-1] == EOS and (real[:-1] == batch["tgt_in"][b, 1 : len(real)]).all()
    assert dm.decode(real[:-1].tolist()) == batch["tgt_text"][b]


def test_joint_and_separate_vocabularies(corpus: Path, tmp_path: Path) -> None:
    joint = data()
    assert joint.src_vocab_size == joint.tgt_vocab_size and joint.src_tokenizer is joint.tgt_tokenizer
    separate = data(joint_vocab=False, tgt_tokenizer=Tokenizer(vocab_size=40, model_type="unigram"))
    assert separate.src_vocab_size != separate.tgt_vocab_size
    assert separate.src_tokenizer.model_path != separate.tgt_tokenizer.model_path
    assert "ü" not in "".join(separate.src_tokenizer.pieces(range(separate.src_vocab_size)))  # English only
    run = tmp_path / "run"
    separate.save_artifacts(str(run))
    assert (run / "tokenizer.model").is_file() and (run / "tgt_tokenizer.model").is_file()


def test_batches_stay_within_the_token_budget(corpus: Path) -> None:
    dm = data(max_tokens=48, buffer_size=200)
    batches = list(dm.train_dataloader())
    assert sum(len(b["ids"]) for b in batches) == 4 * 40  # every non-empty pair, once
    for b in batches:
        longest = max(b["src"].size(1), b["tgt_in"].size(1))
        assert len(b["ids"]) == 1 or len(b["ids"]) * longest <= 48


def test_use_split_evaluates_another_split_or_other_files(corpus: Path) -> None:
    write(corpus / "mt", "test.en.gz", EN[:2], gz=True)
    write(corpus / "mt", "test.de.gz", DE[:2], gz=True)
    dm = data()
    dm.use_split("test")
    assert sorted(t for b in dm.val_dataloader() for t in b["src_text"]) == sorted(EN[:2])
    write(corpus, "other.en", ["Hello."])
    write(corpus, "other.de", ["Hallo."])
    dm.use_split(str(corpus / "other.{lang}"))
    assert [t for b in dm.val_dataloader() for t in b["tgt_text"]] == ["Hallo."]


def test_hub_style_datasets_with_a_translation_column(corpus: Path) -> None:
    """A dataset whose records are {"translation": {"en": ..., "de": ...}} (wmt14-style), here a local folder."""
    folder = corpus / "hubby"
    folder.mkdir()
    rows = [{"translation": {"en": e, "de": d}} for e, d in zip(EN, DE, strict=True) if e]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = data(train=ParallelSource(hub=str(folder), split="train"), val=None, max_tokens=None, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch["src_text"]) == sorted(e for e in EN if e)
    assert sorted(batch["tgt_text"]) == sorted(d for e, d in zip(EN, DE, strict=True) if e)
