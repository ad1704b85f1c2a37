"""Checkpoint averaging: the mean of the weights at the last few validations.

JoeyNMT, fairseq and Marian ship it: averaging the parameters of the last checkpoints of
a run smooths the noise of the final updates and often scores higher than any one of
them. Training keeps the weights of its last ``train.average`` validations in
``<run_dir>/snapshots/step<N>.pt`` (model files like ``best.pt``, written atomically,
older ones removed); at the end of the run their mean is validated like any checkpoint and becomes
``best.pt`` only if its validation BLEU beats the best single checkpoint's. The
snapshots live in the run folder, so a resumed run averages the same weights as one
that never stopped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from translate.checkpoint import load_checkpoint, save_checkpoint

_NAME = re.compile(r"step(\d+)\.pt")


def average_weights(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts with the same keys and shapes (floating-point
    entries; any other entry, a counter say, is taken from the last)."""
    if not states:
        raise ValueError("no weights to average")
    keys = list(states[-1])
    for i, state in enumerate(states):
        if list(state) != keys or any(state[k].shape != states[-1][k].shape for k in keys):
            raise ValueError(f"weights {i} do not have the keys and shapes of the others: not the same model")
    out = {}
    for k in keys:
        last = states[-1][k]
        if last.is_floating_point():
            total = torch.zeros_like(last, dtype=torch.float64)
            for state in states:
                total += state[k].to(torch.float64)
            out[k] = (total / len(states)).to(last.dtype)
        else:
            out[k] = last.clone()
    return out


class Snapshots:
    """The weights of a run's last `keep` validations, in `folder` (one file per step)."""

    def __init__(self, folder: Path, keep: int) -> None:
        self.folder, self.keep = Path(folder), keep

    def steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.fullmatch(p.name)))

    def add(self, step: int, payload: dict) -> None:
        """Keep the model file `payload` (a best.pt-style dict) of `step`; forget all but the
        last `keep` (and any from a later step: a resumed run went back to an earlier last.pt)."""
        if self.keep < 2:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.folder / f"step{step}.pt", payload)
        steps = self.steps()
        self._forget([s for s in steps if s > step] + [s for s in steps if s <= step][: -self.keep])

    def clear(self) -> None:
        """Forget every kept model file (a run that starts over from fresh weights)."""
        self._forget(self.steps())

    def _forget(self, steps: list[int]) -> None:
        for step in steps:
            (self.folder / f"step{step}.pt").unlink(missing_ok=True)

    def average(self) -> tuple[dict[str, torch.Tensor], list[int]] | None:
        """The mean of the kept weights and their steps; None with fewer than two."""
        steps = self.steps()[-self.keep :]
        if self.keep < 2 or len(steps) < 2:
            return None
        states = [load_checkpoint(self.folder / f"step{s}.pt")["model"] for s in steps]
        return average_weights(states), steps
