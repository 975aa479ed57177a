"""benchmarks/peers.py and peer_lm.py: the char layout the LM peer reads, our thread count, the bar's direction."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import peer_lm, peers


def read_like_word_language_model(path: Path) -> list[str]:
    # pytorch/examples word_language_model/data.py: each line's whitespace-split words, then '<eos>'
    return [w for line in path.read_text(encoding="utf-8").splitlines() for w in [*line.split(), "<eos>"]]


def test_char_layout_gives_one_token_per_character_and_round_trips(tmp_path: Path) -> None:
    text = (
        "First Citizen:\nBefore we  proceed,\n\nhear me speak"  # double space, blank line, ends inside a line
    )
    count = peer_lm.write_split(text, tmp_path / "train.txt")
    tokens = read_like_word_language_model(tmp_path / "train.txt")
    assert count == len(tokens) == len(text) + 1  # the last, unfinished line still gets its <eos>
    back = "".join("\n" if t == "<eos>" else t.replace(peer_lm.SPACE, " ") for t in tokens)
    assert back == text + "\n"
    whole = text + "\n"
    assert peer_lm.write_split(whole, tmp_path / "valid.txt") == len(
        whole
    )  # a split ending in a newline: exact


def test_char_layout_refuses_a_tab_it_cannot_represent(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"train.txt: the text holds \['\\t'\]"):
        peer_lm.write_split("a\tb\n", tmp_path / "train.txt")


def test_threads_used_prefers_the_probe_choice(tmp_path: Path) -> None:
    log = tmp_path / "fit.log"
    log.write_text(
        "[pipeline] precision bf16-mixed (CPU has AVX512-BF16: native bf16); 2 torch threads (2 usable cores)\n"
        "[pipeline] threads measured over 8 steps each (2 -> 813.6 ms, 1 -> 789.3 ms per step): using 1\n"
    )
    assert peers.threads_used(log) == 1
    log.write_text("[pipeline] precision 32-true (no bf16 units); 1 torch thread (--threads)\n")
    assert peers.threads_used(log) == 1
    assert peers.threads_used(tmp_path / "missing.log") is None


def test_verdict_direction_and_margin_per_task() -> None:
    """Issue 14's bars: +2.0 BLEU, 0.05 nats/char lower, and +0.03 dev accuracy with at least 0.86."""
    assert peers.verdict("lm", {"figure": 1.41}, {"figure": 1.47})["met"] is True  # lower loss is better
    assert peers.verdict("lm", {"figure": 1.44}, {"figure": 1.47})["met"] is False  # better, not by 0.05
    assert peers.verdict("translation", {"figure": 34.5}, {"figure": 32.4})["met"] is True
    assert peers.verdict("translation", {"figure": 33.0}, {"figure": 32.4})["met"] is False
    assert peers.verdict("sentiment", {"figure": 0.855}, {"figure": 0.80})["met"] is False  # under 0.86
    assert peers.verdict("sentiment", {"figure": 0.87}, {"figure": 0.85})["met"] is False  # only +0.02
    assert peers.verdict("sentiment", {"figure": 0.87}, {"figure": 0.83})["met"] is True
    assert peers.verdict("sentiment", {"figure": 0.85}, None)["met"] is None
