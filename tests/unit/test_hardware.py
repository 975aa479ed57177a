"""Precision and thread policies as functions of what the hardware reports (AMX, AVX512-BF16, AVX2 only, CUDA)."""

from __future__ import annotations

import pytest
import torch

from pipeline.training import hardware
from pipeline.training.hardware import Capabilities

AVX2 = Capabilities(cpu_capability="AVX2")
AVX512 = Capabilities(cpu_capability="AVX512")
AVX512_BF16 = Capabilities(cpu_capability="AVX512", avx512_bf16=True)
AMX = Capabilities(cpu_capability="AVX512", amx=True, avx512_bf16=True)
CUDA_BF16 = Capabilities(cuda=True, cuda_bf16=True, cpu_capability="AVX2")
CUDA_OLD = Capabilities(cuda=True, cuda_bf16=False, cpu_capability="AVX2")


@pytest.mark.parametrize(
    ("caps", "cuda", "expected", "why"),
    [
        (AVX2, False, "32-true", "no AMX or AVX512-BF16"),
        (AVX512, False, "32-true", "no AMX or AVX512-BF16"),
        (AVX512_BF16, False, "bf16-mixed", "AVX512-BF16"),
        (AMX, False, "bf16-mixed", "AMX"),
        (CUDA_BF16, True, "bf16-mixed", "CUDA"),
        (CUDA_OLD, True, "32-true", "without bf16"),
        (CUDA_BF16, False, "32-true", "no AMX"),  # accelerator: cpu on a GPU machine with an AVX2 host
    ],
)
def test_auto_precision_follows_the_hardware(caps, cuda, expected, why):
    precision, reason = hardware.choose_precision(caps, cuda)
    assert precision == expected
    assert why in reason


def test_accelerator_auto_means_cuda_only_where_there_is_one():
    assert hardware.on_cuda("auto", CUDA_BF16) and hardware.on_cuda("gpu", AVX2)
    assert not hardware.on_cuda("auto", AVX2) and not hardware.on_cuda("cpu", CUDA_BF16)


def test_auto_on_an_avx2_cpu_trains_in_fp32():
    assert hardware.resolve_precision("auto", "cpu", AVX2)[0] == "32-true"
    assert hardware.resolve_precision(None, "auto", AVX2)[0] == "32-true"


def test_explicit_precision_wins():
    assert hardware.resolve_precision("32-true", "cpu", AMX) == ("32-true", "explicit")
    assert hardware.resolve_precision("bf16-mixed", "gpu", CUDA_BF16) == ("bf16-mixed", "explicit")


def test_explicit_bf16_the_cpu_cannot_run_is_one_sentence(monkeypatch):
    # what oneDNN says on an AVX2-only CPU, at the first LSTM step
    monkeypatch.setattr(
        hardware,
        "bf16_probe_error",
        lambda device="cpu": "could not create a primitive descriptor for the LSTM",
    )
    with pytest.raises(ValueError) as err:
        hardware.resolve_precision("bf16-mixed", "cpu", AVX2)
    message = str(err.value)
    assert message.startswith("trainer.precision bf16-mixed: this CPU (AVX2")
    assert "--trainer.precision auto or 32-true" in message and "\n" not in message
    # and auto never picks a bf16 that fails its probe
    assert hardware.resolve_precision("auto", "cpu", AMX)[0] == "32-true"


def test_probe_runs_here_when_the_cpu_reports_native_bf16():
    caps = Capabilities.detect()
    if caps.cpu_bf16() is None:
        pytest.skip(f"this CPU ({caps.cpu_capability}) has no native bf16")
    assert hardware.bf16_probe_error("cpu") is None
    assert hardware.resolve_precision("auto", "cpu", caps)[0] == "bf16-mixed"


def test_probe_answers_the_same_inside_no_grad():
    # benchmarks/video.py builds the CLI for evaluation inside torch.no_grad(): the probe's backward then failed
    # ("element 0 of tensors does not require grad") and an explicit bf16 was refused on a Zen 4 with AVX512-BF16
    outside = hardware.bf16_probe_error("cpu"), hardware.resolve_precision("auto", "cpu")
    with torch.no_grad():
        assert (hardware.bf16_probe_error("cpu"), hardware.resolve_precision("auto", "cpu")) == outside


def test_refusal_names_the_bf16_feature_the_cpu_has(monkeypatch):
    monkeypatch.setattr(hardware, "bf16_probe_error", lambda device="cpu": "some oneDNN error")
    with pytest.raises(ValueError, match=r"this CPU \(AVX512, AMX\) cannot run bf16 RNNs"):
        hardware.resolve_precision("bf16-mixed", "cpu", AMX)


@pytest.mark.parametrize(
    ("cores", "processes", "workers", "expected"),
    [
        (2, 1, 0, 2),  # a laptop-sized machine, one process
        (2, 1, 1, 1),  # one core decodes video, the other trains
        (2, 2, 0, 1),  # 2 CPU DDP ranks share 2 cores
        (2, 2, 2, 1),  # oversubscribed: never below 1
        (64, 4, 3, 13),  # 4 GPUs per node, 3 loader workers each
        (1, 1, 0, 1),
    ],
)
def test_thread_policy(cores, processes, workers, expected):
    assert hardware.choose_threads(cores, processes, workers) == expected


def test_usable_cores_follow_affinity_and_slurm(monkeypatch):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert hardware.usable_cores() == (4, "CPU affinity")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert hardware.usable_cores() == (3, "SLURM_CPUS_PER_TASK")


def test_explicit_threads_win(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.resolve_threads(5, 1, 0) == (5, "--threads")
    assert hardware.resolve_threads("auto", 1, 0) == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    n, why = hardware.resolve_threads("auto", 2, 1)
    assert n == 3 and "8 usable cores" in why and "2 processes" in why


@pytest.mark.parametrize(
    ("devices", "expected"), [(1, 1), (2, 2), ("2", 2), ([0, 1, 2], 3), ("0,1", 2), ("auto", 1), (None, 1)]
)
def test_local_processes_on_cpu(devices, expected):
    assert hardware.local_processes(devices, "cpu", AVX2) == expected


def test_probe_candidates():
    assert hardware.probe_candidates(8) == [8, 4, 1]
    assert hardware.probe_candidates(2) == [2, 1]
    assert hardware.probe_candidates(1) == [1]


def test_thread_probe_trains_on_with_the_fastest_count(monkeypatch, capsys):
    """Steps at 2 threads take 30 ms and at 1 thread 20 ms (a small model beside another process): 1 wins."""
    import torch

    clock = [0.0]
    monkeypatch.setattr(hardware.time, "perf_counter", lambda: clock[0])
    before = torch.get_num_threads()
    probe = hardware.ThreadProbe([2, 1], steps=3, skip=1)
    try:
        used = []
        for i in range(1 + 3 * 2 + 2):
            probe.on_train_batch_start(None, None, {}, i)
            used.append(torch.get_num_threads())
            clock[0] += {2: 0.030, 1: 0.020}.get(torch.get_num_threads(), 0.05)
            probe.on_train_batch_end(None, None, None, {}, i)
        assert used[1:7] == [2, 1, 2, 1, 2, 1]  # taking turns
        assert probe.chosen == 1 and torch.get_num_threads() == 1 and used[7:] == [1, 1]
        assert "(2 -> 30.0 ms, 1 -> 20.0 ms per step): using 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
