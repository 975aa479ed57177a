"""Precision and CPU threads chosen from what the hardware reports, not from the machine a config was tuned on.

``trainer.precision: auto`` (the default of every shipped config) and ``--threads auto`` (the CLI default) resolve
here, before the model is built, and the choice is said in one line at start::

    [pipeline] precision bf16-mixed (CPU has AVX512-BF16: native bf16); 2 torch threads (2 usable cores / 1 process ...)

Precision: bf16 pays only where the device computes it natively. On a CPU without bf16 units (AVX2, plain AVX-512)
oneDNN emulates it: its bf16 LSTM refuses to run at all, and a bf16 matmul runs ~60x slower than fp32 (0.7 vs 46
GFLOP/s measured on an AVX2-only EPYC). So ``auto`` is bf16-mixed on CUDA devices with bf16 support and on CPUs whose
torch reports AMX or AVX512-BF16, and only if a small LSTM and GRU actually run forward and backward under bf16 autocast
there; 32-true everywhere else. An explicit setting wins, but an explicit bf16 that this CPU cannot run is refused with
one sentence instead of oneDNN's traceback at the first step.

Threads: OpenMP threads that outnumber the cores spin against each other (DDP ranks and DataLoader workers share the
same cores). ``auto`` starts from the cores this process may use (CPU affinity, SLURM's ``--cpus-per-task``), divides
them among the training processes on the node, and leaves one core to each DataLoader worker, keeping at least 1.
In a single CPU process :class:`ThreadProbe` then times the first steps at that count, half of it and 1, and keeps the
fastest. ``--threads N`` or ``OMP_NUM_THREADS`` win.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pytorch_lightning as pl
import torch

BF16_PRECISIONS = ("bf16-mixed", "bf16-true", "bf16")


@dataclass(frozen=True)
class Capabilities:
    """What the device reports about bf16. ``detect()`` reads this machine; tests build other machines by hand."""

    cuda: bool = False
    cuda_bf16: bool = False
    cpu_capability: str = "DEFAULT"  # torch's dispatch level: DEFAULT, AVX2, AVX512, ...
    amx: bool = False
    avx512_bf16: bool = False

    @classmethod
    def detect(cls) -> Capabilities:
        cuda = torch.cuda.is_available()
        return cls(
            cuda=cuda,
            cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported()),
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            amx=_cpu_flag("_is_amx_tile_supported"),
            avx512_bf16=_cpu_flag("_is_avx512_bf16_supported"),
        )

    def cpu_bf16(self) -> str | None:
        """The CPU feature that makes bf16 native, or None."""
        return "AMX" if self.amx else "AVX512-BF16" if self.avx512_bf16 else None


def _cpu_flag(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)  # private helpers of torch.cpu (torch >= 2.3)
    return bool(fn()) if fn is not None else False


def on_cuda(accelerator: object, caps: Capabilities) -> bool:
    """Whether ``trainer.accelerator`` puts training on a CUDA device."""
    name = str(accelerator or "auto").lower()
    return name in ("cuda", "gpu") or (name == "auto" and caps.cuda)


def choose_precision(caps: Capabilities, cuda: bool) -> tuple[str, str]:
    """``auto`` -> (precision, reason). ``cuda``: training runs on a CUDA device."""
    if cuda:
        if caps.cuda_bf16:
            return "bf16-mixed", "CUDA device with bf16 support"
        return "32-true", "CUDA device without bf16 support"
    feature = caps.cpu_bf16()
    if feature:
        return "bf16-mixed", f"CPU has {feature}: native bf16"
    return "32-true", f"CPU ({caps.cpu_capability}) has no AMX or AVX512-BF16: bf16 would be emulated"


def bf16_probe_error(device: str = "cpu") -> str | None:
    """Run a tiny LSTM and GRU forward and backward under bf16 autocast; the error text if this device cannot.

    Gradients are switched on for the probe: a caller inside ``torch.no_grad()`` (an evaluation script building the
    CLI) would otherwise make every CPU look unable to run bf16."""
    try:
        with torch.enable_grad(), torch.autocast(device, dtype=torch.bfloat16):
            for cell in (torch.nn.LSTM, torch.nn.GRU):
                rnn = cell(8, 8, batch_first=True).to(device)
                out, _ = rnn(torch.randn(2, 3, 8, device=device))  # (B, T, H)
                out.float().sum().backward()
    except RuntimeError as exc:
        return str(exc).strip().splitlines()[0]
    return None


def resolve_precision(
    requested: object, accelerator: object, caps: Capabilities | None = None
) -> tuple[str, str]:
    """The precision to train with and why. Raises ValueError (one sentence) for a bf16 this CPU cannot run."""
    caps = caps or Capabilities.detect()
    cuda = on_cuda(accelerator, caps)
    if requested in (None, "auto"):
        precision, reason = choose_precision(caps, cuda)
        if precision.startswith("bf16") and not cuda:
            error = bf16_probe_error("cpu")
            if error:
                return "32-true", f"{reason}, but bf16 RNNs fail here ({error})"
        return precision, reason
    precision = str(requested)
    if precision in BF16_PRECISIONS and not cuda:
        error = bf16_probe_error("cpu")
        if error:
            raise ValueError(
                f"trainer.precision {precision}: this CPU ({caps.cpu_capability}, "
                f"{caps.cpu_bf16() or 'no AMX or AVX512-BF16'}) cannot run "
                f"bf16 RNNs ({error}); use --trainer.precision auto or 32-true."
            )
        if caps.cpu_bf16() is None:
            return precision, "explicit; note: this CPU has no native bf16, so it is emulated and slow"
    return precision, "explicit"


# --- threads -----------------------------------------------------------------------------------------------------
def usable_cores() -> tuple[int, str]:
    """The cores this process may use, and where the number comes from."""
    try:
        cores, source = len(os.sched_getaffinity(0)), "CPU affinity"
    except AttributeError:  # macOS, Windows
        cores, source = os.cpu_count() or 1, "cpu_count"
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit() and int(slurm) < cores:
        cores, source = int(slurm), "SLURM_CPUS_PER_TASK"
    return cores, source


def choose_threads(cores: int, processes: int, workers: int) -> int:
    """Torch threads per training process: its share of the cores, less one per DataLoader worker, at least 1."""
    return max(1, cores // max(1, processes) - max(0, workers))


def local_processes(devices: object, accelerator: object, caps: Capabilities) -> int:
    """How many training processes ``trainer.devices`` starts on this node."""
    if isinstance(devices, int):
        return max(1, devices)
    if isinstance(devices, list | tuple):
        return max(1, len(devices))
    text = str(devices or "auto").strip()
    if text.lstrip("-").isdigit():
        n = int(text)
        if n > 0:
            return n
        return max(1, torch.cuda.device_count() if on_cuda(accelerator, caps) else 1)
    if "," in text:
        return len([x for x in text.split(",") if x.strip()])
    if text == "auto" and on_cuda(accelerator, caps):
        return max(1, torch.cuda.device_count())
    return 1


def resolve_threads(requested: object, processes: int, workers: int) -> tuple[int, str]:
    """The torch thread count and why: ``--threads`` wins, then ``OMP_NUM_THREADS``, then the policy above."""
    if requested not in (None, "auto"):
        return max(1, int(requested)), "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores, source = usable_cores()
    n = choose_threads(cores, processes, workers)
    return n, (
        f"{cores} usable cores ({source}) / {processes} process{'es' if processes > 1 else ''}"
        f" - {workers} loader worker{'s' if workers != 1 else ''}"
    )


class ThreadProbe(pl.Callback):
    """Time a few training steps at each candidate thread count, then train on with the fastest.

    The core-count rule above is a start, not always the optimum: a small model's step can be too short to pay for
    a second thread's synchronisation, and another process on the machine (a data worker, another job) turns every
    OpenMP barrier into a wait for a descheduled thread (SST-2 BiLSTM on a 2-core EPYC with one core busy elsewhere:
    2 threads 1,648 sentences/s, 1 thread 2,127). Used by ``--threads auto`` in a single CPU process; the steps it
    times are ordinary training steps. Thread counts change the order of floating-point sums, so a run that must be
    bit-identical to another (exact resume across restarts) should pin ``--threads``.

    Args:
        candidates: Thread counts to try, the rule's choice first.
        steps: Timed steps per candidate (after ``skip`` untimed warm-up steps).
    """

    def __init__(self, candidates: list[int], steps: int = 8, skip: int = 5) -> None:
        self.candidates, self.steps, self.skip = candidates, steps, skip
        self.times: dict[int, list[float]] = {c: [] for c in candidates}
        self.chosen: int | None = None
        self._seen = 0
        self._start = 0.0

    def _current(self) -> int | None:
        # candidates take turns (2, 1, 2, 1, ...) so that first-time costs of new batch shapes (oneDNN builds a
        # kernel per shape) fall on all of them alike, not on whichever goes first
        k = self._seen - self.skip
        return (
            self.candidates[k % len(self.candidates)] if 0 <= k < self.steps * len(self.candidates) else None
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.chosen is None and (n := self._current()) is not None:
            torch.set_num_threads(n)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.chosen is not None:
            return
        n = self._current()
        if n is not None:
            self.times[n].append(time.perf_counter() - self._start)
        self._seen += 1
        if self._seen >= self.skip + self.steps * len(self.candidates):
            median = {c: sorted(t)[len(t) // 2] for c, t in self.times.items() if t}
            self.chosen = min(median, key=median.get)
            torch.set_num_threads(self.chosen)
            timings = ", ".join(f"{c} -> {1000 * m:.1f} ms" for c, m in median.items())
            from pipeline.cli import say  # at call time: pipeline.cli imports this module

            say(f"threads measured over {self.steps} steps each ({timings} per step): using {self.chosen}")


def probe_candidates(threads: int) -> list[int]:
    """The rule's count, half of it and 1 (distinct, in that order)."""
    return list(dict.fromkeys([threads, max(1, threads // 2), 1]))
