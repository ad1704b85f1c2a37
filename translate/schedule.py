"""When the learning rate changes and when training stops: pure functions of the counters.

:func:`lr_at` is the learning-rate schedule; :class:`EarlyStopping` reads each validation
BLEU and keeps the best score, the count of validations without a gain, and the plateau
schedule's scale. Both are plain data, saved in ``last.pt`` and restored on resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from translate.config import TrainConfig


def lr_at(cfg: TrainConfig, step: int, progress: float, plateau_scale: float = 1.0) -> float:
    """Learning rate at `step` (1-based), `progress` in [0, 1] of the step or time budget.

    Linear warm-up over `warmup_steps`, then: cosine or linear decay to
    `min_lr_ratio * lr` by the end of the budget; rsqrt decay (Vaswani et al. 2017);
    constant; or plateau (scaled down when validation BLEU stalls).
    """
    warm = min(1.0, step / max(1, cfg.warmup))
    progress = min(max(progress, 0.0), 1.0)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        decay = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.schedule == "linear":
        decay = floor + (1 - floor) * (1 - progress)
    elif cfg.schedule == "rsqrt":
        decay = math.sqrt(max(1, cfg.warmup) / max(step, cfg.warmup, 1))
    else:  # constant, plateau (TrainConfig allows no other)
        decay = plateau_scale
    return cfg.peak_lr * warm * decay


def budget_fraction(cfg: TrainConfig, step: int, elapsed_s: float) -> float:
    """How much of the budget is spent: steps when train.max_steps is set, else time, else 0."""
    if cfg.max_steps:
        return step / cfg.max_steps
    return elapsed_s / (cfg.max_time * 60) if cfg.max_time else 0.0


@dataclass
class EarlyStopping:
    """The best validation BLEU so far, and what its stalling means for the run."""

    best_bleu: float = -1.0
    best_step: int = 0
    bad_validations: int = 0
    plateau_scale: float = 1.0

    def update(self, bleu: float, step: int, cfg: TrainConfig) -> bool:
        """Record one validation; True if it is the best so far."""
        if bleu > self.best_bleu:
            self.best_bleu, self.best_step, self.bad_validations = bleu, step, 0
            return True
        self.bad_validations += 1
        if cfg.schedule == "plateau" and self.bad_validations % cfg.plateau_patience == 0:
            self.plateau_scale *= cfg.plateau_factor
        return False

    def should_stop(self, cfg: TrainConfig) -> bool:
        return bool(cfg.stop_after) and self.bad_validations >= cfg.stop_after
