"""A real one-node SLURM cluster on localhost, for the cluster tests (root needed; Debian's packages).

Everything it writes lives in one state folder (config, spool, logs, pid files): clients find the cluster through
``SLURM_CONF``, so /etc/slurm is left alone. Daemons are stopped by the PIDs this object started, never by name.

    python tests/cluster/slurm_cluster.py start /tmp/slurm    # prints the SLURM_CONF to export
    python tests/cluster/slurm_cluster.py stop /tmp/slurm
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
MUNGE_PID = Path("/run/munge/munged.pid")

CONF = """\
ClusterName=pipelinetest
SlurmctldHost={host}
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
# test speed: a requeued job starts ~10 s later (default ~121 s); the scheduler looks every 5 s; SIGKILL 5 s after
# SIGTERM (Lightning ignores SIGTERM)
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=5,bf_interval=5
KillWait=5
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
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
    """Install, configure, start and stop slurmctld + slurmd (+ munged when none is running)."""

    def __init__(self, state: Path) -> None:
        self.state = Path(state).resolve()
        self.conf = self.state / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
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
        for sub in ("ctld", "spool"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        self.conf.write_text(
            CONF.format(host=self.host, state=self.state, cpus=os.cpu_count() or 1, memory=memory)
        )

    def start(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the SLURM test cluster needs root (daemons, apt-get)")
        self.install()
        for path in (self.state / "slurmctld.pid", self.state / "slurmd.pid"):
            if path.exists() and _alive(int(path.read_text().strip() or 0)):
                raise RuntimeError(f"a cluster already runs from {self.state} (pid file {path})")
            path.unlink(missing_ok=True)
        self.write_config()
        if not (MUNGE_PID.exists() and _alive(int(MUNGE_PID.read_text().strip() or 0))):
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            MUNGE_PID.unlink(missing_ok=True)
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
            self.pids["munged"] = _read_pid(MUNGE_PID)
        env = {**os.environ, **self.env}
        subprocess.run(["slurmctld", "-c", "-f", str(self.conf)], check=True, env=env)  # daemonizes
        self.pids["slurmctld"] = _read_pid(self.state / "slurmctld.pid")
        subprocess.run(["slurmd", "-f", str(self.conf)], check=True, env=env)
        self.pids["slurmd"] = _read_pid(self.state / "slurmd.pid")
        (self.state / "pids").write_text(" ".join(f"{k}={v}" for k, v in self.pids.items()))
        self.wait_idle()

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            proc = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            state = proc.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"node not idle after {timeout:.0f} s (state {state!r}); see {self.state}/slurmd.log"
        )

    def stop(self) -> None:
        """Cancel what still runs, then stop the daemons this object started, by PID."""
        if not self.pids and (self.state / "pids").exists():
            self.pids = dict(
                (k, int(v)) for k, v in (kv.split("=") for kv in (self.state / "pids").read_text().split())
            )
        if self.pids.get("slurmctld") and _alive(self.pids["slurmctld"]):
            jobs = self.run("squeue", "-h", "-o", "%i", check=False, timeout=20).stdout.split()
            for job in jobs:
                self.run("scancel", job, check=False, timeout=20)
            deadline = time.monotonic() + 20
            while jobs and time.monotonic() < deadline:
                jobs = self.run("squeue", "-h", "-o", "%i", check=False, timeout=20).stdout.split()
                time.sleep(1)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in self.pids:
                _stop_pid(self.pids.pop(name))
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
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: python tests/cluster/slurm_cluster.py start|stop STATE_DIR")
    cluster = SlurmCluster(Path(sys.argv[2]))
    if sys.argv[1] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
