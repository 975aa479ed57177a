"""Experiment tracking: W&B by default, offline when no credentials are configured, never waiting for input.

wandb is imported only here and only when a W&B logger is actually built; Lightning's WandbLogger logs from rank 0.
"""

from __future__ import annotations

import netrc
import os
import uuid
from pathlib import Path

WANDB_CLASS = "pytorch_lightning.loggers.WandbLogger"


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    return auth is not None


def wandb_mode() -> str:
    """``online`` with credentials, else ``offline``; an explicit ``WANDB_MODE`` wins."""
    explicit = os.environ.get("WANDB_MODE")
    if explicit:
        return explicit
    return "online" if has_wandb_credentials() else "offline"


def wandb_run_id(run_dir: Path) -> str:
    """The run's W&B id, kept in ``<run>/wandb_id`` so that a resumed run (or a requeued job) logs into the same run."""
    path = Path(run_dir) / "wandb_id"
    if path.exists():
        return path.read_text().strip()
    # Every rank of a SLURM job builds its config at once, before any rank knows who is 0. The first to publish its
    # id wins: a complete file is linked into place (link never replaces), and the losers read the winner's id.
    path.parent.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    draft = path.with_name(f".wandb_id.{os.getpid()}.{run_id}")
    draft.write_text(run_id)
    try:
        os.link(draft, path)
    except FileExistsError:
        run_id = path.read_text().strip()
    finally:
        draft.unlink()
    return run_id


def wandb_init_args(run_dir: Path, experiment: str, user_args: dict | None) -> dict:
    """Fill save_dir / id / offline / project for a WandbLogger; the user's config keeps precedence."""
    mode = wandb_mode()
    args = {"project": "pipeline", "name": f"{experiment}/{Path(run_dir).name}"}
    args.update(user_args or {})
    args.update({"save_dir": str(run_dir), "id": wandb_run_id(run_dir), "resume": "allow"})
    if mode in ("offline", "disabled"):
        args["offline"] = True
        args["log_model"] = False  # Lightning refuses log_model with offline
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault(
        "WANDB_CONSOLE", "off"
    )  # a training log belongs to the terminal, not to wandb's capture
    return args


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))


def sync_hint(run_dir: Path) -> str | None:
    runs = offline_runs(run_dir)
    if not runs:
        return None
    # a resumed or requeued run adds one offline folder per part, all under the same W&B run id
    return "W&B ran offline; to upload this run: wandb sync " + " ".join(str(r) for r in runs)
