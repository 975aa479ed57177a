"""Multi-process start-up under SLURM: say who is who, and turn a rendezvous that never completes into one sentence.

Every rank of a job joins the process group at ``MASTER_ADDR:MASTER_PORT`` (Lightning takes the first host of
``SLURM_JOB_NODELIST`` and port 15000 + the last 4 digits of the job id). The backends then connect every pair of
ranks over the interface that ``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` name (or one they guess). A node that
cannot reach the master address, or that offers the others an address they cannot reach (``lo``, a docker bridge),
makes every rank wait in ``init_process_group`` for its 30-minute timeout. :func:`watch` starts a thread that
instead ends the process after ``PIPELINE_RENDEZVOUS_TIMEOUT`` seconds (default 300) with::

    error: rank 2 on n2 (node rank 1) could not complete the rendezvous at n1:15007 (10.232.0.11) within 60 s;
    check that every node reaches that address and port, and GLOO_SOCKET_IFNAME (now 'lo') ...

and, once the group is up, prints one line per rank (host, global rank, node rank, seconds since the watch began).
A rendezvous that fails at once (``GLOO_SOCKET_IFNAME`` names no interface of this host) becomes one sentence too,
through :func:`failure`, which the CLI asks about any error that ends a run.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import torch.distributed as dist

ENV_TIMEOUT = "PIPELINE_RENDEZVOUS_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
#: Exit status of a rank whose rendezvous timed out (as for other user errors).
EXIT_RENDEZVOUS = 2
_started = time.monotonic()
# held by whichever reports a failure first (the watchdog, or the CLI through failure()): one sentence per rank
_reporting = threading.Lock()


def _master() -> tuple[str, str]:
    """The address and port the ranks meet at: what Lightning set, else what it will set from SLURM's variables."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (addr and port):
        from lightning_fabric.plugins.environments import SLURMEnvironment

        env = SLURMEnvironment(auto_requeue=False)
        addr, port = addr or env.main_address, port or str(env.main_port)
    return addr, port


def _resolved(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return "does not resolve"


def message(timeout_s: float) -> str:
    """The one sentence for a rendezvous that did not complete within ``timeout_s``."""
    addr, port = _master()
    settings = ", ".join(f"{k} (now {os.environ[k]!r})" if k in os.environ else f"{k} (unset)"
                         for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"))  # fmt: skip
    return (
        f"rank {os.environ.get('SLURM_PROCID', '?')} on {socket.gethostname()} (node rank "
        f"{os.environ.get('SLURM_NODEID', '?')}) could not complete the rendezvous at {addr}:{port} "
        f"({_resolved(addr)}) within {timeout_s:.0f} s; check that every node reaches that address and port, "
        f"and that {settings} name the interface that carries it on every node (pipeline.submit --socket-ifname)."
    )


class RendezvousError(RuntimeError):
    """A rank could not join the process group; the message is one sentence."""


def failure(exc: BaseException | None) -> RendezvousError | None:
    """The one sentence for an error raised while this rank was joining the process group of a multi-task job."""
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) < 2 or (dist.is_available() and dist.is_initialized()):
        return None
    error = _explain(exc)
    if error is not None:
        _reporting.acquire()  # kept: the CLI prints this sentence and ends the process; the watchdog stays quiet
    return error


def _explain(exc: BaseException | None) -> RendezvousError | None:
    while exc is not None:
        text = str(exc)
        if "Unable to find address for" in text:  # gloo: the named interface does not exist here
            name = text.rsplit(":", 1)[-1].strip()
            have = ", ".join(n for _, n in socket.if_nameindex())
            addr, port = _master()
            return RendezvousError(
                f"rank {os.environ.get('SLURM_PROCID', '?')} on {socket.gethostname()} (node rank "
                f"{os.environ.get('SLURM_NODEID', '?')}) cannot join the rendezvous at {addr}:{port} "
                f"({_resolved(addr)}): GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME name interface {name!r}, which this "
                f"host does not have (it has {have}); name one that every node has and that reaches {addr} "
                f"(pipeline.submit --socket-ifname)."
            )
        if isinstance(exc, getattr(dist, "DistError", ())):  # store timeouts, refused connections
            return RendezvousError(message(float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_S))))
        exc = exc.__cause__ or exc.__context__
    return None


def _watchdog(timeout_s: float) -> None:
    deadline = _started + timeout_s
    while not (dist.is_available() and dist.is_initialized()):
        if time.monotonic() > deadline:
            _reporting.acquire()  # blocks for good when the main thread reports an error of its own
            print(f"error: {message(timeout_s)}", file=sys.stderr, flush=True)
            os._exit(EXIT_RENDEZVOUS)  # the main thread is stuck inside init_process_group
        time.sleep(0.2)
    addr, port = _master()
    print(
        f"[pipeline] rank {dist.get_rank()}/{dist.get_world_size()} on host {socket.gethostname()}, node rank "
        f"{os.environ.get('SLURM_NODEID', '0')}, local rank {os.environ.get('SLURM_LOCALID', '0')}: joined at "
        f"{addr}:{port} {time.monotonic() - _started:.1f} s after start-up",
        file=sys.stderr,
        flush=True,
    )


def watch() -> None:
    """Start the watchdog (once, and only for a job of several tasks)."""
    global _started
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) < 2 or getattr(watch, "running", False):
        return
    watch.running = True  # type: ignore[attr-defined]
    _started = time.monotonic()
    timeout_s = float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_S))
    threading.Thread(target=_watchdog, args=(timeout_s,), name="rendezvous-watchdog", daemon=True).start()
