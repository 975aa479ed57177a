"""When ``loss.backward()`` may stand in for Lightning's ``manual_backward``.

``manual_backward`` goes through the strategy and the precision plugin, which call ``on_before_backward`` and
``on_after_backward`` on every callback and on the module, setting ``_current_fx_name`` on the module (an
``nn.Module.__setattr__``) around each call: about 0.7% of an SST-2 step on a CPU (py-spy, ``benchmarks/roofline.py``),
where none of them does anything. Where nothing would differ, the task calls ``loss.backward()`` itself:

    manual_backward(loss)                               loss.backward()
      strategy.pre_backward         (DDP: prepare)        -- only where the strategy's is the base no-op
      precision.pre_backward        (scaler, hooks)       -- only Precision / MixedPrecision without a scaler
        on_before_backward x (callbacks + module)         -- only where none overrides it
      module.backward(loss)                               -- only where the module does not override it
      precision.post_backward       (hooks)
        on_after_backward x (callbacks + module)          -- only where none overrides it
      strategy.post_backward                              -- only where the strategy's is the base no-op

Anything else (DDP, DeepSpeed, FSDP, a scaler, a profiler, a callback with one of the hooks) keeps Lightning's path.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.profilers import PassThroughProfiler
from pytorch_lightning.strategies import Strategy

HOOKS = ("on_before_backward", "on_after_backward")


def direct_backward_ok(trainer: pl.Trainer, module: pl.LightningModule) -> bool:
    """Whether ``loss.backward()`` does exactly what ``module.manual_backward(loss)`` would in this fit."""
    strategy = type(trainer.strategy)
    plugin = trainer.precision_plugin
    return (
        getattr(module, "_fabric", None) is None
        and all(
            getattr(strategy, name) is getattr(Strategy, name)
            for name in ("backward", "pre_backward", "post_backward")
        )
        and type(plugin) in (Precision, MixedPrecision)
        and getattr(plugin, "scaler", None) is None
        and isinstance(trainer.profiler, PassThroughProfiler)
        and all(_inherited(module, h, pl.LightningModule) for h in ("backward", *HOOKS))
        and all(_inherited(cb, h, pl.Callback) for cb in trainer.callbacks for h in HOOKS)
    )


def _inherited(obj: object, name: str, base: type) -> bool:
    """Whether ``obj.name`` is ``base``'s own method (not overridden by its class, nor set on the instance)."""
    return getattr(getattr(obj, name), "__func__", None) is getattr(base, name)
