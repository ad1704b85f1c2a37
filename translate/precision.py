"""Training precision: fp32, or bf16 autocast where the hardware does bf16 fast."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext

import torch

from translate.config import PRECISIONS, ConfigError

log = logging.getLogger(__name__)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 where the hardware does bf16 fast (checked at run time), else fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision={precision!r} is not allowed: choose one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        fast = torch.cuda.is_bf16_supported()
    else:
        fast = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if precision == "bf16" and not fast:
        log.warning("train.precision=bf16 but this %s has no fast bf16 arithmetic; expect it to be slow", device.type)
    return "bf16" if precision == "bf16" or (precision == "auto" and fast) else "fp32"


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager:
    """A bf16 autocast context for precision bf16, a null context for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
