"""--malloc auto: a large tensor freed and allocated again comes back without page faults (glibc only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.training import allocator

# Allocate, fill and free a 64 MB tensor 24 times in a fresh process; print the minor page faults of the last four.
# (torch asks for 64-byte aligned blocks, a little more than a freed one holds, so glibc's heap takes a few cycles of
# growth before its free blocks fit: about 8 blocks' worth here, then none; a training step's mix settles likewise.)
PROBE = """
import json, resource, sys, torch
from pipeline.training import allocator
said = allocator.keep_freed_memory(sys.argv[1])
def cycle():
    torch.ones(16 * 1024 * 1024)  # 64 MB of float32, touched, freed at once
for _ in range(20):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    cycle()
print(json.dumps({"faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4, "said": said}))
"""


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=clean | env, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="mallopt's thresholds are glibc's")
def test_a_freed_block_is_reused_without_page_faults():
    kept, default = probe("auto"), probe("default")
    pages = 64 * 1024 * 1024 // 4096
    # glibc's default unmaps the 64 MB block on free: every cycle faults all 16,384 pages in again
    assert default["faults"] > pages / 2, default
    assert kept["faults"] < pages / 20, kept
    assert "keeps freed blocks" in kept["said"] and "--malloc default" in default["said"]


def test_an_allocator_the_user_chose_is_left_alone(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert allocator.keep_freed_memory("auto") == "malloc from LD_PRELOAD"
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert allocator.keep_freed_memory("auto") == "malloc thresholds from the environment"
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072")
    assert allocator.keep_freed_memory("auto") == "malloc thresholds from the environment"


@pytest.mark.skipif(allocator._glibc() is None, reason="mallopt's thresholds are glibc's")
def test_thresholds_from_the_environment_win():
    # the user's own 128 KB threshold keeps glibc unmapping the block: the policy must not override it
    mine = probe("auto", MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    assert mine["said"] == "malloc thresholds from the environment"
    assert mine["faults"] > 64 * 1024 * 1024 // 4096 / 2, mine
