"""Hosts on one machine for the SLURM test cluster: one network namespace per compute node, on a bridge.

    host (slurmctld, test clients)                    names resolve through /etc/hosts lines tagged TAG
      ptbr0 10.232.0.1/24
        ├── ptveth1 ══ eth0 10.232.0.11  namespace pt-n1  (slurmd -N n1, hostname n1, its job steps)
        └── ptveth2 ══ eth0 10.232.0.12  namespace pt-n2  (slurmd -N n2, hostname n2, its job steps)

Every packet a test sends goes to loopback or to these addresses: the namespaces have no default route, so a DNS
query for a node address fails at once instead of going out (and waiting for a timeout). Everything made here is removed by
:meth:`NodeNetwork.delete`, which also ends processes still inside a namespace (job steps of a stopped slurmd), by
PID; it is safe to call twice and after a failed :meth:`NodeNetwork.create`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

SUBNET = "10.232.0"  # a private /24 nothing else on this machine uses
BRIDGE = "ptbr0"
HOSTS = Path("/etc/hosts")
TAG = "# pipeline-test-cluster"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


class NodeNetwork:
    """Namespaces ``pt-n1`` .. ``pt-nN`` with hostnames ``n1`` .. ``nN`` at ``10.232.0.11`` .. on bridge ``ptbr0``."""

    def __init__(self, nodes: int) -> None:
        if not 1 <= nodes <= 9:
            raise ValueError(f"nodes={nodes}: the test network has room for 1 to 9 nodes")
        self.nodes = [f"n{i}" for i in range(1, nodes + 1)]

    host_address = f"{SUBNET}.1"

    @staticmethod
    def namespace(node: str) -> str:
        return f"pt-{node}"

    @staticmethod
    def address(node: str) -> str:
        return f"{SUBNET}.1{node[1:]}"

    def enter(self, node: str, *cmd: str) -> list[str]:
        """``cmd`` inside ``node``'s network namespace, with its own hostname (a UTS namespace of its own).

        ``nsenter --net`` rather than ``ip netns exec``: the latter remounts /sys, and slurmd then finds no cgroups.
        """
        script = f'hostname {node} && exec "$@"'
        return ["nsenter", f"--net=/run/netns/{self.namespace(node)}", "unshare", "--uts", "sh", "-c", script,
                "sh", *cmd]  # fmt: skip

    def create(self) -> None:
        self.delete()  # leftovers of a run that was killed before it could clean up
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{self.host_address}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for node in self.nodes:
            ns, veth = self.namespace(node), f"ptveth{node[1:]}"
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", BRIDGE)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(node)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        lines = [line for line in HOSTS.read_text().splitlines() if TAG not in line]
        lines += [f"{self.address(n)} {n} {TAG}" for n in self.nodes]
        HOSTS.write_text("\n".join(lines) + "\n")  # in place: /etc/hosts is often a bind mount

    def pids(self, node: str) -> list[int]:
        proc = _ip("netns", "pids", self.namespace(node), check=False)
        return [int(p) for p in proc.stdout.split() if p.isdigit()]

    def delete(self) -> None:
        """End what still runs in the namespaces (by PID), delete them, the bridge and the /etc/hosts lines."""
        existing = _ip("netns", "list", check=False).stdout.split()
        for node in self.nodes:
            ns = self.namespace(node)
            if ns not in existing:
                continue
            for sig in (signal.SIGTERM, signal.SIGKILL):
                pids = self.pids(node)
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 5
                while pids and self.pids(node) and time.monotonic() < deadline:
                    time.sleep(0.2)
            _ip("netns", "del", ns, check=False)  # takes its end of the veth pair, and so the pair, with it
        for node in self.nodes:
            _ip("link", "del", f"ptveth{node[1:]}", check=False)
        _ip("link", "del", BRIDGE, check=False)
        if HOSTS.exists() and TAG in HOSTS.read_text():
            HOSTS.write_text("".join(line for line in HOSTS.read_text().splitlines(True) if TAG not in line))
