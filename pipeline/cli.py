"""The LightningCLI shared by ``pipeline.fit``, ``pipeline.evaluate`` and the task tools (predict, sample, translate).

On top of LightningCLI it adds: one directory per run (``runs/<experiment>/<run id>``), ``--ckpt_path last``,
W&B tracking that falls back to offline, atomic checkpoints, the exact-resume callback, network sizes filled in from
the data (``vocab_size``, ``num_classes``, ...), and one-sentence errors instead of tracebacks for user mistakes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
import yaml
from lightning_fabric.plugins import CheckpointIO
from lightning_fabric.plugins.environments import ClusterEnvironment
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities import rank_zero_only

from pipeline import tracking
from pipeline.data.faults import DataError, worker_error_message
from pipeline.data.module import StreamDataModule
from pipeline.tasks.base import NonFiniteError
from pipeline.training import allocator, hardware, rundir, startup_checks
from pipeline.training.checkpoint_io import AtomicCheckpointIO
from pipeline.training.preemption import Preemption, slurm_plugins
from pipeline.training.progress import LogProgress, use_epoch_bar
from pipeline.training.rendezvous import failure as rendezvous_failure
from pipeline.training.resume import ResumeState
from pipeline.training.trace import DataTrace

#: Network arguments the CLI fills from the DataModule attribute of the same name, when the network has them.
LINKED = (
    "vocab_size",
    "num_classes",
    "num_frame_classes",
    "src_vocab_size",
    "tgt_vocab_size",
    "feature_size",
    "frame_channels",
)
CKPT_ENV = "PIPELINE_CKPT"


def say(message: str) -> None:
    """A line for the user, from rank 0 only, on stderr (stdout is for results)."""
    if rank_zero_only.rank == 0:
        print(f"[pipeline] {message}", file=sys.stderr, flush=True)


class PipelineCLI(LightningCLI):
    """``python -m pipeline.fit --config configs/<task>/<name>.yaml [--trainer.max_epochs 3] [--ckpt_path last]``."""

    def __init__(self, args: list[str] | None = None, mode: str = "fit") -> None:
        args = with_logger_save_dir(list(sys.argv[1:] if args is None else args))
        self.mode = mode
        self.run_dir: Path | None = None
        self.resume_from: Path | None = None
        startup_checks.quiet_lightning()
        super().__init__(
            model_class=pl.LightningModule,
            datamodule_class=StreamDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,  # we write <run>/config.yaml ourselves, once, on rank 0
            seed_everything_default=0,
            run=False,
            args=args,
            parser_kwargs={"prog": f"python -m pipeline.{mode}", "description": __doc__.splitlines()[0]},
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in LINKED:
            parser.link_arguments(
                "data",
                f"model.init_args.network.init_args.{name}",
                compute_fn=lambda dm, name=name: getattr(dm, name, None),
                apply_on="instantiate",
            )
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Resume from a checkpoint: 'last' = the newest checkpoint of the latest run of this experiment; "
            "or a .ckpt file. For evaluate/predict: the checkpoint to load.",
        )
        parser.add_argument(
            "--experiment",
            type=str | None,
            default=None,
            help="Experiment name (default: the config file's name); runs go to <runs_dir>/<experiment>/.",
        )
        parser.add_argument(
            "--runs_dir", type=str, default="runs", help="Folder that holds every experiment's runs."
        )
        parser.add_argument(
            "--split",
            type=str | None,
            default=None,
            help="evaluate only: the split to score instead of the validation split (a split name the data module "
            "knows, or a file path under the data root).",
        )
        parser.add_argument(
            "--threads",
            type=int | Literal["auto"],
            default="auto",
            help="Torch CPU threads per process. auto: the usable cores (affinity, SLURM --cpus-per-task) divided "
            "among this node's training processes, less one per DataLoader worker. OMP_NUM_THREADS also wins over auto.",
        )
        parser.add_argument(
            "--malloc",
            type=Literal["auto", "default"],
            default="auto",
            help="auto: on CPU with glibc, freed blocks under 1 GiB stay in the heap for the next step instead of "
            "being unmapped and page-faulted in again (faster steps, higher resident memory; "
            "pipeline/training/allocator.py). default: malloc as the C library sets it.",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 1})
        allow_auto_precision(parser)

    # --- run directory, logger, checkpoints -------------------------------------------------------------------
    def before_instantiate_classes(self) -> None:
        cfg = self.config
        self.hardware_line = self._choose_hardware()
        if self.mode != "fit":
            cfg.trainer.logger = False
            cfg.trainer.devices = 1  # evaluation and prediction run in one process
            cfg.trainer.strategy = "auto"
            cfg.trainer.num_nodes = 1
            if cfg.ckpt_path:  # the run's own tokenizers (<run>/<key>.model), never the cache or a retrain
                run_dir = Path(str(cfg.ckpt_path)).resolve().parent.parent
                init = cfg.data.init_args
                for key in ("tokenizer", "tgt_tokenizer"):
                    if (run_dir / f"{key}.model").is_file() and init.get(key) is not None:
                        init[key].model_path = str(run_dir / f"{key}.model")
                if (run_dir / "vocab.json").is_file() and "vocab_file" in init:  # character vocabularies
                    init.vocab_file = str(run_dir / "vocab.json")
            return
        configs = cfg.get("config") or []
        experiment = cfg.experiment or (Path(str(configs[-1])).stem if configs else "default")
        cfg.experiment = experiment
        self.run_dir, self.resume_from = rundir.resolve(cfg.runs_dir, experiment, cfg.ckpt_path)
        if os.environ.get(CKPT_ENV):  # DDP child: use exactly what rank 0 resolved
            self.resume_from = Path(os.environ[CKPT_ENV])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.environ[rundir.ENV] = str(self.run_dir.resolve())
        if self.resume_from:
            os.environ[CKPT_ENV] = str(self.resume_from)
        cfg.trainer.default_root_dir = str(self.run_dir)
        cfg.checkpoint.dirpath = str(self.run_dir / "checkpoints")
        logger = cfg.trainer.logger
        if logger is None or logger is True:
            cfg.trainer.logger = {"class_path": tracking.WANDB_CLASS, "init_args": {}}
            logger = cfg.trainer.logger
        for entry in logger if isinstance(logger, list) else [logger]:
            if not entry or entry is True:
                continue
            class_path = entry["class_path"] if isinstance(entry, dict) else entry.class_path
            init = entry["init_args"] if isinstance(entry, dict) else entry.init_args
            init = dict(init or {})
            if class_path.endswith("WandbLogger"):
                init = tracking.wandb_init_args(self.run_dir, experiment, init)
            else:
                init["save_dir"] = str(self.run_dir)
            if isinstance(entry, dict):
                entry["init_args"] = init
            else:
                entry.init_args = type(entry)(**init) if hasattr(entry, "init_args") else init

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        seed = self.config.get("seed_everything")
        # the user's trainer.plugins are kept; ours fill in only the kinds the user did not give (Lightning
        # accepts one checkpoint IO and one cluster environment)
        user = self._get(self.config_init, "trainer", default={}).get("plugins") or []
        plugins = list(user) if isinstance(user, list | tuple) else [user]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        if self.mode == "fit" and not any(isinstance(p, ClusterEnvironment) for p in plugins):
            plugins += slurm_plugins()
        trainer = super().instantiate_trainer(plugins=plugins, **kwargs)
        resume = ResumeState(seed=int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else 0)
        trainer.callbacks.insert(0, resume)
        startup_checks.install(trainer, self.mode)
        use_epoch_bar(trainer)
        if self.mode == "fit" and not sys.stderr.isatty():
            trainer.callbacks.append(LogProgress())
        trace = DataTrace.from_env()
        if trace is not None:
            trainer.callbacks.insert(1, trace)
        if getattr(self, "thread_probe", None) is not None:
            trainer.callbacks.append(self.thread_probe)
        if self.mode == "fit":  # last: after ModelCheckpoint, so a step's own checkpoint is written first
            trainer.callbacks.append(Preemption())
        if self.mode != "fit":
            trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
        return trainer

    # --- the commands -----------------------------------------------------------------------------------------
    def fit(self) -> None:
        run_dir = self.run_dir
        assert run_dir is not None
        if rank_zero_only.rank == 0:
            self.parser.save(self.config, run_dir / "config.yaml", skip_none=False, overwrite=True)
            self.datamodule.save_artifacts(str(run_dir))
            mode = (
                tracking.wandb_mode()
            )  # before the logger starts: WandbLogger(offline) sets WANDB_MODE=dryrun
            resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            for logger in self.trainer.loggers:
                logger.log_hyperparams(resolved)
            if mode in ("offline", "dryrun") and any(
                isinstance(lg, pl.loggers.WandbLogger) for lg in self.trainer.loggers
            ):
                say(
                    "W&B: no credentials configured, logging offline (set WANDB_API_KEY, or run `wandb login`)."
                )
        say(self.hardware_line)
        say(f"run directory: {run_dir}")
        if self.resume_from:
            say(f"resuming from {self.resume_from}")
        elif self.config.ckpt_path == "last":
            say(
                f"--ckpt_path last: experiment '{self.config.experiment}' has no checkpoint yet; starting fresh."
            )
        self.trainer.fit(
            self.model, self.datamodule, ckpt_path=str(self.resume_from) if self.resume_from else None
        )
        self.save_final()
        self.report_end()

    def save_final(self) -> None:
        """Training stopped between checkpoint intervals (max_time, max_steps, the data ran out): write last.ckpt so
        the run can be evaluated or continued from where it really ended."""
        callback = self.trainer.checkpoint_callback
        if (
            isinstance(callback, ModelCheckpoint)
            and callback.dirpath
            and not self.trainer.interrupted
            and callback._last_global_step_saved < self.trainer.global_step
        ):
            self.trainer.save_checkpoint(Path(callback.dirpath) / "last.ckpt")

    def _choose_hardware(self) -> str:
        """Resolve ``trainer.precision: auto`` and ``--threads auto`` before anything is built (see
        :mod:`pipeline.training.hardware`); returns the start line that says what was chosen and why."""
        cfg = self.config
        caps = hardware.Capabilities.detect()
        if cfg.trainer.precision in (None, "auto") and _has_precision_plugin(cfg.trainer.get("plugins")):
            precision, why_precision = "from trainer.plugins", "a precision plugin was given"
            cfg.trainer.precision = None  # Lightning refuses a precision flag next to a precision plugin
        else:
            precision, why_precision = hardware.resolve_precision(
                cfg.trainer.precision, cfg.trainer.accelerator, caps
            )
            cfg.trainer.precision = precision
        processes = hardware.local_processes(cfg.trainer.devices, cfg.trainer.accelerator, caps)
        on_gpu = hardware.on_cuda(cfg.trainer.accelerator, caps)
        workers = int((cfg.data.get("init_args") or {}).get("num_workers") or 0)
        threads, why_threads = hardware.resolve_threads(cfg.threads, processes, workers)
        torch.set_num_threads(threads)
        self.thread_probe = None
        candidates = hardware.probe_candidates(threads)
        policy = why_threads not in ("--threads", "OMP_NUM_THREADS")
        single = (
            processes == 1
            and int(cfg.trainer.num_nodes or 1) == 1
            and int(os.environ.get("SLURM_NTASKS", 1)) == 1
        )
        if self.mode == "fit" and policy and single and not on_gpu and len(candidates) > 1:
            self.thread_probe = hardware.ThreadProbe(candidates)
            why_threads += f"; then the fastest of {'/'.join(map(str, candidates))}, timed on the first steps"
        line = f"precision {precision} ({why_precision}); {threads} torch thread{'s' if threads > 1 else ''} ({why_threads})"
        return line if on_gpu else f"{line}; {allocator.keep_freed_memory(cfg.malloc)}"

    def report_end(self) -> None:
        faults = self.datamodule.fault_counts()
        if faults:
            say(
                "skipped inputs (last epoch, this process): "
                + ", ".join(f"{k}={v}" for k, v in sorted(faults.items()))
            )
        metrics = {
            k: round(float(v), 5) for k, v in self.trainer.callback_metrics.items() if k.startswith("val")
        }
        if metrics:
            say(f"final validation metrics: {json.dumps(metrics)}")
        if rank_zero_only.rank == 0 and self.run_dir is not None:
            hint = tracking.sync_hint(self.run_dir)
            if hint:
                say(hint)
        say(f"run directory: {self.run_dir}")


def _has_precision_plugin(plugins: object) -> bool:
    entries = plugins if isinstance(plugins, list | tuple) else [plugins] if plugins else []
    for entry in entries:
        name = entry.get("class_path", "") if hasattr(entry, "get") else type(entry).__name__
        if str(name).rsplit(".", 1)[-1].endswith("Precision"):
            return True
    return False


def allow_auto_precision(parser: LightningArgumentParser) -> None:
    """Let ``trainer.precision`` take ``auto`` (and make it the default): Lightning's own type has no such value,
    so the parser's type hint for that one option is widened; the CLI resolves it before the Trainer is built."""
    for action in parser._actions:
        if getattr(action, "dest", None) == "trainer.precision":
            action._typehint = action._typehint | Literal["auto"]  # type: ignore[attr-defined]
            action.default = "auto"
            action.help = (
                "auto (default): bf16-mixed where the device computes bf16 natively (CUDA with bf16, CPUs with AMX "
                "or AVX512-BF16), else 32-true. Or a Lightning precision: 32-true, bf16-mixed, ..."
            )


def with_logger_save_dir(args: list[str]) -> list[str]:
    """``--trainer.logger CSVLogger`` alone would fail on the logger's required ``save_dir``, which the CLI replaces
    with the run directory anyway: give it a placeholder so the short form works."""
    joined = " ".join(args)
    if (
        "--trainer.logger" in joined
        and "logger.save_dir" not in joined
        and "logger.init_args.save_dir" not in joined
    ):
        for i, arg in enumerate(args):
            value = arg.split("=", 1)[1] if arg.startswith("--trainer.logger=") else None
            if arg == "--trainer.logger" and i + 1 < len(args):
                value = args[i + 1]
            if value and value.split(".")[-1] in ("CSVLogger", "TensorBoardLogger"):
                return [*args, "--trainer.logger.save_dir", "runs"]
    return args


def run_config_for(ckpt_path: str) -> Path:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>/config.yaml``, with a clear error when it is not there."""
    cfg = Path(ckpt_path).resolve().parent.parent / "config.yaml"
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file.")
    if not cfg.is_file():
        raise FileNotFoundError(
            f"{cfg} not found: pass the run's config with --config, or a checkpoint inside a run directory."
        )
    return cfg


#: Lightning warnings that say nothing actionable for this pipeline's design (manual optimization, streaming loaders).
QUIET = (
    "Using ModelCheckpoint with manual optimization",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    "The number of training batches",
    "Total length of `.*` across ranks is zero",
    "You're resuming from a checkpoint that ended before the epoch ended",
    "The anonymous setting has no effect",
)


PACKAGE = Path(__file__).resolve().parent


def _raised_here(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by this package's own code (a config value it refuses), not by a library."""
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE)


def user_error_in(exc: BaseException | None) -> BaseException | None:
    """The user-facing error behind ``exc``: a DataError, or a ValueError raised by our own checks. jsonargparse and
    Lightning re-raise errors of class construction and argument links wrapped in their own exceptions."""
    while exc is not None:
        if isinstance(exc, (DataError, NonFiniteError, FileNotFoundError)):
            return exc
        if isinstance(exc, ValueError) and _raised_here(exc):
            return exc
        if startup_checks.interval_error(exc) is not None:  # Lightning's own refusal, as one sentence
            return startup_checks.interval_error(exc)
        exc = exc.__cause__ or exc.__context__
    return None


def main(fn: Callable[[], None]) -> None:
    """Run a command; user mistakes end with one sentence on stderr and exit status 2, not a traceback."""
    logging.basicConfig(level=logging.WARNING, format="[pipeline] %(message)s")
    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    try:
        fn()
    except Exception as exc:
        error = user_error_in(exc) or rendezvous_failure(exc)
        if error is None:
            raise
        message = worker_error_message(error) if isinstance(error, DataError) else str(error)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
