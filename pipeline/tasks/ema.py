"""An exponential moving average (EMA) of a task's weights: ``model.init_args.ema_decay: 0.999`` (off by default).

After every optimizer step taken, ``ema = d * ema + (1 - d) * weights`` over the floating-point parameters, with
``d = min(ema_decay, (1 + n) / (10 + n))`` after n updates, so that the random initial weights fade quickly at the
start (the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``). The average is what users get:

    training steps ──► live weights ──(every step)──► EMA (fp32, same device)
    validation in fit: the EMA swapped into the network, swapped back after
    checkpoints: ``state_dict`` = the EMA (evaluate, translate, sample, predict, average use it);
                 ``ema.live`` = the live weights, which a resumed fit trains on (and the EMA carries on)

Under DDP every rank applies the same all-reduced gradients, so every rank's average is the same.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightEMA:
    """The moving average of ``module``'s floating-point parameters (kept in float32)."""

    def __init__(self, module: nn.Module, decay: float, start: dict[str, torch.Tensor] | None = None) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(
                f"model.ema_decay is {decay}; set it between 0 and 1 (e.g. 0.999), or null for no EMA."
            )
        self.decay, self.updates = decay, 0
        self.names = [n for n, p in module.named_parameters() if p.is_floating_point()]
        params = dict(module.named_parameters())
        start = start or {}
        # copies: .to() of a float32 tensor already on its device would alias the parameter itself
        self.shadow = [
            start.get(n, params[n].detach()).to(params[n].device, torch.float32, copy=True)
            for n in self.names
        ]
        self.swapped = False  # True while the module holds the average and ``shadow`` the live weights

    def _params(self, module: nn.Module) -> list[torch.Tensor]:
        params = dict(module.named_parameters())
        return [params[n] for n in self.names]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        assert not self.swapped, "the EMA is updated from the live weights, never during validation"
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live = [p.detach().float() for p in self._params(module)]
        torch._foreach_lerp_(self.shadow, live, 1.0 - d)  # shadow += (1 - d) * (live - shadow)

    @torch.no_grad()
    def swap(self, module: nn.Module) -> None:
        """Exchange the module's weights with the held ones (the average in, or the live weights back)."""
        for p, held in zip(self._params(module), self.shadow, strict=True):
            tmp = p.detach().clone()
            p.copy_(held.to(p.dtype))
            held.copy_(tmp.float())
        self.swapped = not self.swapped

    def average_and_live(self, module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(average, live weights) by parameter name, on the CPU, whichever of them the module holds now."""
        held = {n: t.detach().to("cpu", copy=True) for n, t in zip(self.names, self.shadow, strict=True)}
        params = self._params(module)
        inside = {n: p.detach().to("cpu", copy=True) for n, p in zip(self.names, params, strict=True)}
        return (inside, held) if self.swapped else (held, inside)
