"""Checkpoint averaging (as OpenNMT-py's ``average_models`` and fairseq's ``average_checkpoints`` ship it).

The element-wise mean of the weights of a few checkpoints of one run, usually the last N, is a cheap ensemble that
tends to score a little better than the last checkpoint alone. The result is an ordinary checkpoint: the newest input
with its ``state_dict`` replaced by the mean (floating-point tensors, summed in float64; integer buffers are taken
from the newest), its optimizer state and live EMA weights dropped (they belong to none of the averaged weights), and the sources listed
under ``averaged_from``. It is written to ``<run>/averaged/`` by default, so that evaluate, translate, sample and
predict find the run's config.yaml and tokenizer beside it, and ``--ckpt_path last`` and the "last N" of a later
average never pick it up::

    runs/<experiment>/<run>/
        config.yaml, tokenizer.model
        checkpoints/step00300.ckpt step00400.ckpt step00500.ckpt last.ckpt   ◄── the last N (by global step)
        averaged/last3.ckpt                                                  ──► evaluate / translate / predict
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.training.checkpoint_io import AtomicCheckpointIO
from pipeline.training.rundir import checkpoints

AVERAGED = "averaged"  # the folder of a run that holds averaged checkpoints


def load(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file.")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def last_of_run(run_dir: Path, n: int) -> list[Path]:
    """The ``n`` checkpoints of a run with the highest global steps, oldest first (``last.ckpt`` is skipped when a
    step checkpoint holds the same step)."""
    if n < 1:
        raise ValueError(f"--last {n}: average at least 1 checkpoint.")
    if not (Path(run_dir) / "config.yaml").is_file():
        raise FileNotFoundError(f"--run {run_dir}: not a run directory (it has no config.yaml).")
    by_step: dict[int, Path] = {}
    for path in checkpoints(
        Path(run_dir)
    ):  # newest last: a step's own file wins over last.ckpt written after
        step = int(load(path).get("global_step", -1))
        if step not in by_step or by_step[step].name == "last.ckpt":
            by_step[step] = path
    if len(by_step) < n:
        raise ValueError(
            f"--last {n}: {run_dir}/checkpoints holds only {len(by_step)} checkpoints of distinct steps; lower --last "
            f"or keep more (checkpoint.save_top_k -1 with checkpoint.every_n_train_steps)."
        )
    return [by_step[s] for s in sorted(by_step)[-n:]]


def average_state_dicts(states: list[dict[str, torch.Tensor]], names: list[str]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (float64 sums, cast back); other tensors from the last state."""
    first = states[0]
    for state, name in zip(states[1:], names[1:], strict=True):
        if state.keys() != first.keys():
            diff = sorted(set(state) ^ set(first))[:3]
            raise ValueError(
                f"{name} has other weights than {names[0]} (e.g. {', '.join(diff)}): not the same model."
            )
        for key, value in state.items():
            if value.shape != first[key].shape:
                raise ValueError(
                    f"{name}: {key} has shape {tuple(value.shape)}, {names[0]} {tuple(first[key].shape)}: "
                    f"not the same model."
                )
    out: dict[str, torch.Tensor] = {}
    for key, last in states[-1].items():
        if not last.is_floating_point():
            out[key] = last.clone()
            continue
        total = torch.zeros(last.shape, dtype=torch.float64)
        for state in states:
            total += state[key].to(torch.float64)
        out[key] = (total / len(states)).to(last.dtype)
    return out


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """A checkpoint whose weights are the mean of ``paths``' (see the module docstring)."""
    if not paths:
        raise ValueError("no checkpoints to average.")
    loaded = [load(p) for p in paths]
    names = [str(p) for p in paths]
    for ckpt, name in zip(loaded, names, strict=True):
        if "state_dict" not in ckpt:
            raise ValueError(f"{name} has no state_dict: not a checkpoint of this pipeline.")
    newest = max(range(len(loaded)), key=lambda i: int(loaded[i].get("global_step", -1)))
    out = {k: v for k, v in loaded[newest].items() if k not in ("optimizer_states", "lr_schedulers", "ema")}
    out["state_dict"] = average_state_dicts([c["state_dict"] for c in loaded], names)
    out["averaged_from"] = [str(Path(p).resolve()) for p in paths]
    return out


def default_output(paths: list[Path], last: int | None) -> Path:
    """``<run of the newest input>/averaged/last<N>.ckpt`` (or ``mean<N>.ckpt`` for a given list)."""
    run_dir = Path(paths[-1]).resolve().parent.parent
    return run_dir / AVERAGED / (f"last{last}.ckpt" if last else f"mean{len(paths)}.ckpt")


def write(checkpoint: dict[str, Any], out: Path) -> None:
    """Write atomically; refuse a place where the task tools would not find the run's config.yaml."""
    out = Path(out)
    if not (out.resolve().parent.parent / "config.yaml").is_file():
        raise ValueError(
            f"--out {out}: write it into a folder of a run directory (e.g. <run>/{AVERAGED}/), so that evaluate, "
            f"translate, sample and predict find the run's config.yaml and tokenizer two levels up."
        )
    AtomicCheckpointIO().save_checkpoint(checkpoint, out)
