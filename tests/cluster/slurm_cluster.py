"""A real SLURM cluster on this machine, for the cluster tests (root needed; Debian's packages).

One node: slurmctld and slurmd on localhost. Several nodes (``--nodes 2``): slurmctld on the host, one slurmd per
node in a network + UTS namespace of its own (hostnames n1, n2, ...; see netns.py), so SLURM, gloo and the pipeline
see separate hosts that talk over a real interface (eth0 in each namespace).

Everything it writes lives in one state folder (config, spool, logs, pid files): clients find the cluster through
``SLURM_CONF``, so /etc/slurm is left alone. Daemons are stopped by the PIDs this object started, never by name, and
the namespaces are deleted, also when start-up fails half-way and (atexit) when the Python process ends early.

Partitions: ``debug`` (default, never preempted); ``low`` (preemptable: SIGTERM, then requeue after GraceTime) and
``high`` (preempts ``low``), for the priority-preemption tests.

    python tests/cluster/slurm_cluster.py start /tmp/slurm [--nodes 2]    # prints the SLURM_CONF to export
    python tests/cluster/slurm_cluster.py stop /tmp/slurm
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from netns import NodeNetwork

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
MUNGE_PID = Path("/run/munge/munged.pid")
GRACE_S = 20  # partition low: SIGTERM, then this long to save before SLURM requeues the job

CONF = """\
ClusterName=pipelinetest
SlurmctldHost={ctld_host}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# test speed: a requeued job starts ~10 s later (default ~121 s); the scheduler looks every 5 s; SIGKILL 15 s after
# SIGTERM (default 30 s): time for the final checkpoint of a cancelled job on a busy 2-core machine
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=5,bf_interval=5
KillWait=15
# a job in partition high preempts one in partition low: SIGTERM, GraceTime, then requeue
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd_%n.pid
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool_%n
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd_%n.log
{node_lines}
PartitionName=debug Nodes={nodes} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
PartitionName=low Nodes={nodes} MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime={grace}
PartitionName=high Nodes={nodes} MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path, wait_s: float = 10.0) -> int:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text().strip())
        time.sleep(0.1)
    raise RuntimeError(f"{path} did not appear: see the daemon's log in {path.parent}")


def _stop_pid(pid: int, wait_s: float = 15.0) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


class SlurmCluster:
    """Install, configure, start and stop slurmctld + one slurmd per node (+ munged when none is running).

    Args:
        state: The folder for config, spool, logs and pid files.
        nodes: 1: everything on localhost; more: one network namespace per node (see netns.py).
    """

    def __init__(self, state: Path, nodes: int = 1) -> None:
        self.state = Path(state).resolve()
        self.conf = self.state / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.network = NodeNetwork(nodes) if nodes > 1 else None
        self.nodes = self.network.nodes if self.network else [self.host]
        self.pids: dict[str, int] = {}

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, scontrol) needs in its environment."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            cmd, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def install(self) -> None:
        """apt-get the packages when a binary is missing (CI starts from a clean machine)."""
        if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
            check=True,
            env=env,
            capture_output=True,
        )

    def write_config(self) -> None:
        (self.state / "ctld").mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            (self.state / f"spool_{node}").mkdir(parents=True, exist_ok=True)
        (self.state / "ctld" / "clustername").unlink(missing_ok=True)
        cpus = os.cpu_count() or 1
        # the nodes share this machine's memory: each gets its part of half of it
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2 // len(self.nodes)
        if self.network:
            ctld_host = f"{self.host}({self.network.host_address})"
            addrs = {n: self.network.address(n) for n in self.nodes}
        else:
            ctld_host, addrs = self.host, {self.host: "127.0.0.1"}
        node_lines = "\n".join(
            f"NodeName={n} NodeAddr={a} CPUs={cpus} RealMemory={memory} State=UNKNOWN"
            for n, a in addrs.items()
        )
        self.conf.write_text(
            CONF.format(
                ctld_host=ctld_host,
                state=self.state,
                node_lines=node_lines,
                nodes=",".join(self.nodes),
                grace=GRACE_S,
            )  # fmt: skip
        )

    def _pid_files(self) -> dict[str, Path]:
        files = {"slurmctld": self.state / "slurmctld.pid"}
        files.update({f"slurmd_{n}": self.state / f"slurmd_{n}.pid" for n in self.nodes})
        return files

    def start(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the SLURM test cluster needs root (daemons, apt-get, namespaces)")
        self.install()
        for path in self._pid_files().values():
            if path.exists() and _alive(int(path.read_text().strip() or 0)):
                raise RuntimeError(f"a cluster already runs from {self.state} (pid file {path})")
            path.unlink(missing_ok=True)
        atexit.register(self.stop)  # pytest killed by a timeout, a KeyboardInterrupt: still clean up
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.write_config()
        if not (MUNGE_PID.exists() and _alive(int(MUNGE_PID.read_text().strip() or 0))):
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            MUNGE_PID.unlink(missing_ok=True)
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
            self.pids["munged"] = _read_pid(MUNGE_PID)
            self._save_pids()
        if self.network:
            (self.state / "network").write_text(str(len(self.nodes)))  # so that `stop` from a shell finds it
            self.network.create()
        env = {**os.environ, **self.env}
        files = self._pid_files()
        subprocess.run(["slurmctld", "-c", "-f", str(self.conf)], check=True, env=env)  # daemonizes
        self.pids["slurmctld"] = _read_pid(files["slurmctld"])
        self._save_pids()
        for node in self.nodes:
            cmd = ["slurmd", "-f", str(self.conf)]
            if self.network:  # in the node's namespaces; -N: which NodeName line is this daemon
                cmd = self.network.enter(node, *cmd, "-N", node)
            subprocess.run(cmd, check=True, env=env)
            self.pids[f"slurmd_{node}"] = _read_pid(files[f"slurmd_{node}"])
            self._save_pids()
        self.wait_idle()

    def _save_pids(self) -> None:
        (self.state / "pids").write_text(" ".join(f"{k}={v}" for k, v in self.pids.items()))

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        states: list[str] = []
        while time.monotonic() < deadline:
            proc = self.run("sinfo", "-h", "-N", "-p", "debug", "-o", "%T", check=False)
            states = proc.stdout.split()
            if len(states) == len(self.nodes) and set(states) == {"idle"}:
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"nodes not idle after {timeout:.0f} s (states {states}); see {self.state}/slurmd_*.log"
        )

    def stop(self) -> None:
        """Cancel what still runs, stop the daemons this object started (by PID), delete the namespaces."""
        if not self.pids and (self.state / "pids").exists():
            self.pids = dict(
                (k, int(v)) for k, v in (kv.split("=") for kv in (self.state / "pids").read_text().split())
            )
        if self.network is None and (self.state / "network").exists():
            self.network = NodeNetwork(int((self.state / "network").read_text()))
        if self.pids.get("slurmctld") and _alive(self.pids["slurmctld"]):
            try:
                jobs = self.run("squeue", "-h", "-o", "%i", check=False, timeout=20).stdout.split()
                for job in jobs:
                    self.run("scancel", job, check=False, timeout=20)
                deadline = time.monotonic() + 20
                while jobs and time.monotonic() < deadline:
                    jobs = self.run("squeue", "-h", "-o", "%i", check=False, timeout=20).stdout.split()
                    time.sleep(1)
            except subprocess.TimeoutExpired:
                pass  # the daemons are stopped below all the same
        for name in [k for k in self.pids if k.startswith("slurmd")] + ["slurmctld", "munged"]:
            if name in self.pids:
                _stop_pid(self.pids.pop(name))
        if self.network is not None:
            self.network.delete()
            (self.state / "network").unlink(missing_ok=True)
        (self.state / "pids").unlink(missing_ok=True)

    # --- job queries (sacct needs a database; scontrol keeps finished jobs for MinJobAge = 300 s) ----------------
    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...); {} once the job is forgotten."""
        proc = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        fields: dict[str, str] = {}
        for token in proc.stdout.split():
            if "=" in token:
                key, value = token.split("=", 1)
                fields.setdefault(key, value)
        return fields

    def wait_state(self, job_id: str, states: set[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(1)
        raise TimeoutError(
            f"job {job_id} not in {sorted(states)} after {timeout:.0f} s: {info.get('JobState')}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Start or stop the SLURM test cluster.")
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("state", type=Path, help="The cluster's state folder.")
    parser.add_argument(
        "--nodes", type=int, default=1, help="Compute nodes (more than 1: network namespaces)."
    )
    ns = parser.parse_args()
    cluster = SlurmCluster(ns.state, nodes=ns.nodes)
    if ns.action == "start":
        cluster.start()
        atexit.unregister(cluster.stop)  # it stays up until `stop`
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
