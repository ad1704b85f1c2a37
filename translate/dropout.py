"""Dropout (Srivastava et al. 2014) whose CPU masks come from random bits.

torch's CPU dropout draws one Bernoulli sample per element, one Mersenne Twister call at a
time: on the 2-core Intel Xeon without AVX512-BF16 that took 15-30 ms for a (110, 16, 512)
activation, where the mask below takes 1-3 ms (README, "Dropout from random bits"). Here a
CPU mask is 16 random bits per element, drawn 64 at a time from torch's default generator
(so ``torch.manual_seed`` and a resumed run's saved RNG state govern it as before), and an
element is dropped where its 16 bits fall below round(p * 65536): with probability p to
within 1 / 131072. The kept elements are scaled by the inverse of the exact keep
probability, so the expectation of every element is unchanged, as in torch's.

Elsewhere (CUDA, whose dropout is one fast kernel) and in evaluation it is torch's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 16  # a mask element's 16 bits: p is resolved to 1 / LEVELS


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """x (any shape) -> x with each element zeroed with probability p, the rest scaled by
    1 / (1 - p); x itself where not training or p is 0."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    drop = round(p * LEVELS)
    if drop >= LEVELS:
        return x * 0.0
    if drop == 0:
        return x
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # the full 64 bits of each draw
    keep = bits.view(torch.int16)[:n].view(x.shape) >= drop - LEVELS // 2  # int16 runs from -LEVELS / 2
    return (x * keep).mul_(LEVELS / (LEVELS - drop))


class Dropout(nn.Dropout):
    """``nn.Dropout`` with :func:`dropout`'s CPU masks: the same arguments, no parameters, so a
    model's state dict is the same with either."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return dropout(input, self.p, self.training)
