"""Learning-rate schedule of the LAVIMO paper, per optimiser step.

The paper trains with AdamW at a constant ``lr`` until epoch ``lr_decay_start_epoch`` and then decays the
learning rate linearly to ``lr_min`` at the last epoch. Here the schedule is evaluated per optimiser step
(0-indexed global step ``s``, ``S`` steps per epoch, ``E`` epochs, decay start epoch ``D``):

* ``s < D*S``:                 ``lr(s) = lr``
* ``D*S <= s <= E*S - 1``:     ``lr(s) = lr + (lr_min - lr) * (s - D*S) / max(1, E*S - 1 - D*S)``

so the first step of epoch ``D`` still uses ``lr`` and the very last step of training uses exactly ``lr_min``.
With ``D >= E`` the rate stays constant. An optional linear warm-up (the config's ``warmup_steps`` > 0; 0 in
the paper preset) multiplies the above by ``min(1, (s + 1) / warmup_steps)``. Parameter groups keep their
ratio to ``lr`` (a backbone group with ``lr * backbone_lr_scale`` decays to ``lr_min * backbone_lr_scale``).
"""

from __future__ import annotations

import torch


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, decay_start_epoch: float,
              lr: float, lr_min: float, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate for 0-indexed optimiser step ``step`` (see module docstring)."""
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError("steps_per_epoch and epochs must be >= 1")
    if lr <= 0:
        raise ValueError(f"lr must be > 0 (got {lr})")
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    total = epochs * steps_per_epoch
    start = int(round(decay_start_epoch * steps_per_epoch))
    if step < start or start >= total:
        return warm
    span = max(1, total - 1 - start)
    frac = min(1.0, (step - start) / span)
    return warm * (lr + (lr_min - lr) * frac) / lr


def paper_scheduler(optimizer: torch.optim.Optimizer, *, steps_per_epoch: int, epochs: int,
                    decay_start_epoch: float, lr: float, lr_min: float,
                    warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor` to every group's initial lr; call ``.step()`` after each
    optimiser step (skipped NaN steps included, so the schedule stays aligned with epochs)."""

    def factor(step: int) -> float:
        return lr_factor(step, steps_per_epoch=steps_per_epoch, epochs=epochs,
                         decay_start_epoch=decay_start_epoch, lr=lr, lr_min=lr_min, warmup_steps=warmup_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
