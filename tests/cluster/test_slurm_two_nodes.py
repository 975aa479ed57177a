"""Two SLURM nodes on this machine (network namespaces n1, n2; see netns.py): 2 nodes x 2 tasks of CPU DDP over
gloo on eth0, submitted through ``pipeline.submit --nodes 2``; preempted by SIGUSR1 and by a higher-priority job,
cancelled, and started with one node misconfigured.

Run with ``make test-cluster`` (root). Afterwards no namespace pt-n* and no slurm daemon is left.
"""

from __future__ import annotations

import collections
import re
import sys
import time
from pathlib import Path

import pytest
import torch
from slurm_cluster import SlurmCluster
from slurm_jobs import (
    DDP,
    PREEMPT_ARGS,
    PREEMPT_STEPS,
    Uninterrupted,
    assert_same_weights,
    check_cancel_stays_cancelled,
    check_priority_preemption,
    first_step_s,
    logged_steps,
    offline_runs,
    submit,
)

pytestmark = pytest.mark.cluster

TWO_NODES = ("--nodes", "2", "--socket-ifname", "eth0")
# The preemption tests compare weights bit for bit: with one rank per node (world 2, ranks on different hosts), and for
# SIGUSR1 also with 2 x 2 ranks (world 4, where the order of the gradient sums matters: see resume.fix_bucket_order)
ONE_PER_NODE = (*TWO_NODES, "--trainer.devices", "1")
LAYOUTS = {"1-per-node": ONE_PER_NODE, "2-per-node": TWO_NODES}
RANK_LINE = r"\[pipeline\] rank (\d+)/(\d+) on host (\S+), node rank (\d+), local rank (\d+): joined at (\S+)"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm2"), nodes=2)
    try:
        cluster.start()
        yield cluster
    finally:  # also when a test (or the start itself) failed: daemons by PID, namespaces, bridge, /etc/hosts lines
        cluster.stop()


@pytest.fixture(scope="module")
def references(slurm, tmp_path_factory) -> dict[str, Uninterrupted]:
    """One uninterrupted run per layout, each submitted when a test first needs it."""
    return {
        name: Uninterrupted(slurm, tmp_path_factory.mktemp(f"reference-{name}"), *args)
        for name, args in LAYOUTS.items()
    }


@pytest.fixture(scope="module")
def reference(references):
    return references["1-per-node"]


def test_two_node_job_completes_and_ranks_read_disjoint_data(slurm, tmp_path):
    trace = tmp_path / "trace"
    job = submit(slurm, tmp_path, "two", *TWO_NODES, *DDP, PIPELINE_TRACE=str(trace))
    info = job.wait({"COMPLETED", "FAILED", "CANCELLED"}, timeout=600)
    text = job.text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-5000:]
    assert info["NodeList"] == "n[1-2]" and "2 node(s) x 2 task(s)" in text
    assert "Starting with 4 processes" in text

    # every rank says once where it runs; node rank and host come from SLURM, the master is the first node
    ranks = re.findall(RANK_LINE, text)
    assert sorted(int(r[0]) for r in ranks) == [0, 1, 2, 3], text[-5000:]
    for rank, world, host, node_rank, local_rank, master in ranks:
        assert world == "4" and int(node_rank) == int(rank) // 2 and int(local_rank) == int(rank) % 2
        assert host == f"n{int(node_rank) + 1}" and master.startswith("n1:")

    # the four ranks read disjoint data: at every step, and over the first 6 steps (< 872 examples, one epoch)
    steps: dict[int, list[set[str]]] = collections.defaultdict(list)
    for rank in range(4):
        per_step = collections.defaultdict(set)
        for line in (trace / f"ids-rank{rank}.tsv").read_text().splitlines():
            step, example = line.split("\t")
            per_step[int(step)].add(example)
        for step, ids in per_step.items():
            steps[step].append(ids)
    assert len(steps) == 12
    for step, sets in steps.items():
        assert len(sets) == 4 and len(set().union(*sets)) == sum(map(len, sets)), f"step {step} overlaps"
    first_epoch = [ids for step in sorted(steps)[:6] for ids in steps[step]]
    assert len(set().union(*first_epoch)) == sum(map(len, first_epoch)) > 6 * 4 * 16
    # all ranks end with the same weights (DDP), and only rank 0 logged to W&B
    finals = [torch.load(trace / f"weights-rank{r}.pt", weights_only=True) for r in range(4)]
    assert all(torch.equal(finals[0][k], f[k]) for f in finals[1:] for k in finals[0])
    runs = offline_runs(job.run_dir)
    assert len(runs) == 1 and logged_steps(runs[0])[-1] == 11
    print(f"2 nodes x 2 tasks: submit -> first training step {first_step_s(job):.0f} s")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_node_job_preempted_by_sigusr1_resumes_to_the_uninterrupted_weights(
    slurm, tmp_path, references, layout
):
    args, reference = LAYOUTS[layout], references[layout]
    world = 2 if layout == "1-per-node" else 4
    job = submit(slurm, tmp_path, "preempted", *PREEMPT_ARGS, *args)
    reference.submit()  # queued behind: it needs both nodes too
    job.wait_for(lambda: 8 in job.checkpoint_steps(), "checkpoint at step 8", timeout=600)
    job.signal("USR1")  # every rank on both nodes
    info = job.wait({"COMPLETED", "FAILED", "CANCELLED"}, timeout=900)
    text = job.text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-5000:]
    stopped = re.findall(r"preempted at step (\d+): saved (\S+); requeued SLURM job (\d+)", text)
    assert len(stopped) == 1, text[-5000:]
    step, saved = int(stopped[0][0]), Path(stopped[0][1])
    assert 8 <= step < PREEMPT_STEPS and stopped[0][2] == job.id, f"stopped at step {step}"
    first_part, second = text.split("restart 1 on", 1)
    assert f"resuming from {saved}" in second
    back = re.findall(RANK_LINE, second)  # the whole job came back, on both nodes
    hosts = [(str(r), f"n{r * 2 // world + 1}") for r in range(world)]
    assert sorted((r[0], r[2]) for r in back) == hosts, second[-3000:]
    # with 4 ranks both parts sum the gradients in one bucket order from their first step on
    fixed = f"DDP with {world} ranks: gradient buckets in parameter order from the first step"
    assert (fixed in first_part and fixed in second) == (world > 2), text[-5000:]
    runs = offline_runs(job.run_dir)
    run_id = (job.run_dir / "wandb_id").read_text().strip()
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)
    first, then = logged_steps(runs[0]), logged_steps(runs[1])
    assert then[0] == step and then[-1] == PREEMPT_STEPS - 1 and max(first) < step  # the step count goes on
    assert torch.load(saved, map_location="cpu", weights_only=True)["global_step"] == PREEMPT_STEPS
    assert_same_weights(saved, reference.last())


def test_two_node_priority_preemption_requeues_and_resumes_from_the_sigterm_save(slurm, tmp_path, reference):
    check_priority_preemption(slurm, tmp_path, reference, *ONE_PER_NODE)


def test_two_node_cancel_stays_cancelled_with_its_final_checkpoint(slurm, tmp_path):
    check_cancel_stays_cancelled(slurm, tmp_path, *TWO_NODES)


@pytest.mark.parametrize(
    ("node2_env", "says"),
    [
        # n2's ranks name an interface n2 does not have: they fail at once
        (
            "GLOO_SOCKET_IFNAME=ib0 NCCL_SOCKET_IFNAME=ib0",
            r"rank [23] on n2 \(node rank 1\) cannot join the rendezvous at n1:\d+ \(10\.232\.0\.11\): "
            r"GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME name interface 'ib0', which this host does not have",
        ),
        # n2's ranks look for the master at an address nobody has (inside the test's /24): all ranks would wait
        (
            "MASTER_ADDR=10.232.0.99",
            r"rank \d on n\d \(node rank \d\) could not complete the rendezvous at \S+:\d+ \(\S+\) within 30 s; "
            r"check that every node reaches that address and port, and that GLOO_SOCKET_IFNAME \(now 'eth0'\)",
        ),
    ],
    ids=["unknown-interface", "unreachable-master"],
)
def test_misconfigured_node_ends_with_one_sentence_not_a_hang(slurm: SlurmCluster, tmp_path, node2_env, says):
    python = tmp_path / "python-on-node"  # what a node-local profile would do to the job's environment
    python.write_text(
        f'#!/bin/sh\nif [ "$SLURMD_NODENAME" = n2 ]; then export {node2_env}; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    job = submit(
        slurm,
        tmp_path,
        "misconfigured",
        *TWO_NODES,
        *DDP,
        PYTHON=str(python),
        PIPELINE_RENDEZVOUS_TIMEOUT="30",
    )
    job.wait_for(lambda: job.info().get("JobState") == "RUNNING", "start", timeout=300)
    started = time.monotonic()
    info = job.wait({"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)
    text = job.text()
    assert info["JobState"] == "FAILED", text[-5000:]
    assert time.monotonic() - started < 150  # start-up (~30 s here) + the 30 s rendezvous timeout + teardown
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert errors and any(re.search(says, e) for e in errors), text[-5000:]
    for error in errors:  # one sentence each, one per rank at most
        assert error.endswith("(pipeline.submit --socket-ifname).") and error.count(". ") == 0, error
    assert len(errors) <= 4 and "Traceback" not in text
