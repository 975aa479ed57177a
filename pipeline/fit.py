"""Train a model: ``python -m pipeline.fit --config configs/<task>/<name>.yaml [overrides] [--ckpt_path last]``.

``--help`` lists every option; ``--print_config`` shows the resolved config. Each run writes into its own directory
``runs/<experiment>/<run id>/`` (config.yaml, tokenizer.model, checkpoints/, wandb/), printed at start and end.
"""

from __future__ import annotations

from pipeline.cli import PipelineCLI, main


def run(args: list[str] | None = None) -> PipelineCLI:
    cli = PipelineCLI(args=args, mode="fit")
    cli.fit()
    return cli


if __name__ == "__main__":  # the guard matters: DDP re-executes this module for ranks > 0
    main(run)
