"""Submit training to SLURM: ``python -m pipeline.submit --config X [--nodes N --gpus-per-node G ...] [fit overrides]``.

Reads the config (and the ``--trainer.*`` overrides after it) so that the job asks SLURM for exactly the processes
Lightning expects: ``--nodes`` = ``trainer.num_nodes`` and ``--ntasks-per-node`` = ``trainer.devices`` (one task per
GPU, or per CPU process with ``trainer.accelerator: cpu``). Renders ``jobs/fit.sbatch`` (``jobs/sweep.sbatch`` with
``--sweep``) with that request, submits it with ``sbatch`` and prints the job id, the log and the run directory;
``--dry-run`` prints the script instead. A request that disagrees with the config is refused with one sentence.
Every other argument goes to ``pipeline.fit`` unchanged, e.g. ``--trainer.max_steps 20000``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

JOBS = Path(__file__).resolve().parent.parent / "jobs"
WARNING_S = 90  # the template's #SBATCH --signal=SIGUSR1@90
IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")  # which interface gloo / NCCL connect ranks over


class RequestError(ValueError):
    """A SLURM request that does not match the config; the message is one sentence."""


@dataclass
class Request:
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    overrides: list[str]  # trainer settings the job must pass so that Lightning agrees with SLURM


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m pipeline.submit", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="The training config (as for pipeline.fit).")
    parser.add_argument("--nodes", type=int, help="Nodes (default: trainer.num_nodes, else 1).")
    parser.add_argument(
        "--gpus-per-node",
        type=int,
        help="GPUs per node, one task each (default: trainer.devices "
        "on a GPU accelerator, none with trainer.accelerator cpu).",
    )
    parser.add_argument("--cpus-per-task", type=int, help="CPUs per task (default: data loader workers + 1).")
    parser.add_argument("--partition", help="SLURM partition (default: the cluster's default).")
    parser.add_argument("--time", help="Time limit, [D-]HH:MM:SS; SIGUSR1 comes 90 s before it.")
    parser.add_argument(
        "--sweep", help="File with one line of fit overrides per array task (jobs/sweep.sbatch)."
    )
    parser.add_argument("--job-name", help="SLURM job name (default: pipeline-<experiment>).")
    parser.add_argument(
        "--socket-ifname",
        help="Network interface the ranks talk over, on every node (e.g. ib0, eth0): sets GLOO_SOCKET_IFNAME and "
        "NCCL_SOCKET_IFNAME in the job (default: what the submitting shell has, else the backends guess).",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="Print the batch script instead of submitting it."
    )
    return parser.parse_known_args(argv)


def option(args: list[str], name: str) -> str | None:
    """The last value of ``--name V`` or ``--name=V`` among the fit overrides."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def trainer_setting(config: dict, overrides: list[str], key: str, default) -> tuple[object, bool]:
    """``trainer.<key>`` from the overrides, else the config, else ``default``; and whether it was set at all."""
    raw = option(overrides, f"--trainer.{key}")
    if raw is not None:
        return yaml.safe_load(raw), True
    trainer = config.get("trainer") or {}
    return trainer.get(key, default), key in trainer


def plan(config_path: str, config: dict, ns: argparse.Namespace, overrides: list[str]) -> Request:
    """Work out the SLURM request from the config and the flags, or raise RequestError."""
    where = f"(in {config_path} and the overrides)"
    num_nodes, nodes_set = trainer_setting(config, overrides, "num_nodes", 1)
    devices, _ = trainer_setting(config, overrides, "devices", "auto")
    accelerator = str(trainer_setting(config, overrides, "accelerator", "auto")[0]).lower()
    extra: list[str] = []  # settings the config leaves open, made to match the request
    if ns.nodes is not None and ns.nodes < 1:
        raise RequestError(f"--nodes {ns.nodes}: ask for at least one node.")
    if ns.nodes is not None and nodes_set and ns.nodes != num_nodes:
        raise RequestError(
            f"--nodes {ns.nodes} does not match trainer.num_nodes {num_nodes} {where}; "
            f"make them equal, e.g. add --trainer.num_nodes {ns.nodes}."
        )
    nodes = int(ns.nodes if ns.nodes is not None else num_nodes)
    if nodes != num_nodes:
        extra += ["--trainer.num_nodes", str(nodes)]
    gpus = ns.gpus_per_node
    if isinstance(devices, list):
        devices = len(devices)
    if gpus is not None and gpus > 0 and accelerator == "cpu":
        raise RequestError(
            f"--gpus-per-node {gpus} asks for GPUs but trainer.accelerator is cpu {where}; "
            f"drop --gpus-per-node or add --trainer.accelerator gpu."
        )
    if isinstance(devices, int) and devices > 0:
        if gpus is not None and gpus > 0 and gpus != devices:
            raise RequestError(
                f"--gpus-per-node {gpus} starts {gpus} tasks per node (one per GPU) but "
                f"trainer.devices is {devices} {where}; make them equal, e.g. add --trainer.devices {gpus}."
            )
        tasks = devices
        if gpus is None:
            gpus = devices if accelerator in ("gpu", "cuda") else 0
    elif gpus:  # devices 'auto' or -1: one task per requested GPU, and tell Lightning the same number
        tasks = gpus
        extra += ["--trainer.devices", str(gpus)]
    else:
        raise RequestError(
            f"trainer.devices is {devices!r} {where}, so the number of tasks per node is unknown; "
            f"pass --gpus-per-node G, or --trainer.devices N for N CPU processes per node."
        )
    if ns.cpus_per_task is not None and ns.cpus_per_task < 1:
        raise RequestError(f"--cpus-per-task {ns.cpus_per_task}: ask for at least one CPU per task.")
    workers = option(overrides, "--data.init_args.num_workers") or option(overrides, "--data.num_workers")
    if workers is None:
        workers = ((config.get("data") or {}).get("init_args") or {}).get("num_workers", 0)
    cpus = ns.cpus_per_task or int(workers) + 1
    return Request(
        nodes=nodes, tasks_per_node=tasks, gpus_per_node=gpus or 0, cpus_per_task=cpus, overrides=extra
    )


def seconds(limit: str) -> int:
    """``[D-]HH:MM:SS`` (and SLURM's shorter forms MM, MM:SS, D-HH, D-HH:MM) in seconds."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", limit)
    if not m:
        raise RequestError(f"--time {limit}: write the limit as [D-]HH:MM:SS, e.g. --time 12:00:00.")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        return days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)  # MM or MM:SS


def render(template: str, sbatch: dict[str, str | None], exports: dict[str, str], args: list[str]) -> str:
    """The template with its ``#SBATCH`` lines replaced by ``sbatch`` and the variables set right below them."""
    lines = template.splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    header = [
        line
        for line in lines[: last + 1]
        if not (line.startswith("#SBATCH") and line.split()[1].split("=")[0].lstrip("-") in sbatch)
    ]
    header += [
        f"#SBATCH --{key}" + (f"={value}" if value is not None else "") for key, value in sbatch.items()
    ]
    block = ["", "# --- set by python -m pipeline.submit ---"]
    block += [f"export {key}={shlex.quote(value)}" for key, value in exports.items()]
    if args:
        block.append("set -- " + " ".join(shlex.quote(a) for a in args) + ' "$@"')
    return "\n".join(header + block + lines[last + 1 :]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ns, overrides = parse_args(argv)
    config_path = Path(ns.config)
    if not config_path.is_file():
        raise RequestError(f"--config {ns.config}: no such file.")
    config = yaml.safe_load(config_path.read_text()) or {}
    request = plan(ns.config, config, ns, overrides)
    runs_dir = Path(option(overrides, "--runs_dir") or "runs").resolve()
    experiment = option(overrides, "--experiment") or config_path.stem
    exp_dir = runs_dir / experiment
    sbatch: dict[str, str | None] = {
        "job-name": ns.job_name or f"pipeline-{experiment}",
        "nodes": str(request.nodes),
        "ntasks-per-node": str(request.tasks_per_node),
        "cpus-per-task": str(request.cpus_per_task),
    }
    if request.gpus_per_node:
        sbatch["gpus-per-node"] = str(request.gpus_per_node)
    if ns.partition:
        sbatch["partition"] = ns.partition
    if ns.time:
        if seconds(ns.time) <= WARNING_S:
            raise RequestError(
                f"--time {ns.time} leaves no room for the {WARNING_S} s preemption warning "
                f"(#SBATCH --signal=SIGUSR1@{WARNING_S}); ask for more time."
            )
        sbatch["time"] = ns.time
    template = JOBS / ("sweep.sbatch" if ns.sweep else "fit.sbatch")
    exports = {
        "CONFIG": str(config_path.resolve()),
        "RUNS_DIR": str(runs_dir),
        "EXPERIMENT": experiment,
        "PYTHON": os.environ.get("PYTHON", sys.executable),
        "JOBS": str(JOBS),
    }
    for key in IFNAME_VARS:  # explicit in the script, so that the log's script shows what the ranks used
        value = ns.socket_ifname or os.environ.get(key)
        if value:
            exports[key] = value
    tasks = 0
    if ns.sweep:
        sweep = Path(ns.sweep)
        if not sweep.is_file():
            raise RequestError(f"--sweep {ns.sweep}: no such file.")
        tasks = len(sweep.read_text().splitlines())
        if tasks == 0:
            raise RequestError(f"--sweep {ns.sweep} is empty; write one line of overrides per run.")
        exports["SWEEP"] = str(sweep.resolve())
        sbatch["array"] = f"0-{tasks - 1}"
        sbatch["output"] = str(exp_dir / "slurm-%A_%a.log")
    else:
        sbatch["output"] = str(exp_dir / "slurm-%j.log")
    script = render(template.read_text(), sbatch, exports, overrides + request.overrides)
    if ns.dry_run:
        sys.stdout.write(script)
        return 0
    exp_dir.mkdir(parents=True, exist_ok=True)  # SLURM does not create the log's folder
    proc = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RequestError(f"sbatch refused the job: {(proc.stderr or proc.stdout).strip()}")
    job = proc.stdout.strip().split(";")[0]
    print(f"job: {job}")
    if ns.sweep:
        print(f"log: {exp_dir}/slurm-{job}_<task>.log (tasks 0-{tasks - 1})")
        print(f"run directory: {exp_dir}/slurm-{job}_<task>")
    else:
        print(f"log: {exp_dir}/slurm-{job}.log")
        print(f"run directory: {exp_dir}/slurm-{job}")
    return 0


def cli() -> None:
    try:
        sys.exit(main())
    except (RequestError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as exc:  # no sbatch on this machine
        print(
            f"error: {exc.filename or exc}: not found; run pipeline.submit on a SLURM login node.",
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    cli()
