"""The model's updates: forward and backward under the chosen precision, then Adam.

A :class:`Learner` owns the optimizer and the DDP wrapper; what it saves and restores
for a resumed run (optimizer, RNG states, the loop's progress) is plain data and tensors.
"""

from __future__ import annotations

import gc
import random
from dataclasses import asdict, dataclass
from typing import Any

import torch

from translate.batching import Batch
from translate.config import TrainConfig
from translate.distributed import SINGLE, Group, wrap
from translate.model import Seq2Seq
from translate.precision import Choice, autocast_for, choose_precision, flush_subnormals, product_dtype


class NoTrainingState(RuntimeError):
    """A checkpoint without the state a resumed run needs."""


@dataclass
class StepResult:
    tokens: int  # real target tokens in the batch
    nll: float  # per-token negative log-likelihood, before the update
    finite: bool  # loss and gradient norm are finite


class Learner:
    """The model's updates: forward and backward under the chosen precision, then Adam.

    :meth:`backward` and :meth:`update` (or :meth:`skip`) are separate so that torchrun's
    processes can agree between them whether the step is taken; :meth:`step` does both
    for a single process."""

    def __init__(
        self,
        model: Seq2Seq,
        cfg: TrainConfig,
        *,
        device: torch.device,
        group: Group = SINGLE,
        precision: Choice | None = None,
    ) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        flush_subnormals()
        self.net = wrap(model, group)  # model.features, under DDP when distributed
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=cfg.peak_lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
        )
        # `precision` as chosen already (the command line does, before any collective), or chosen here
        choice = precision or choose_precision(cfg.precision, device, model, batch_tokens=cfg.batch_tokens)
        self.precision, self.precision_reason = choice.precision, choice.reason
        model.warm_up(backward=True, context=self.autocast(), products=self.products)  # first calls: throwaway data

    def autocast(self):
        return autocast_for(self.precision, self.device)

    @property
    def products(self) -> torch.dtype:
        """The dtype of the output layer's matrix products under this learner's precision."""
        return product_dtype(self.precision)

    def backward(self, batch: Batch) -> StepResult:
        self.net.train()
        batch = batch.to(self.device)
        with self.autocast():
            features = self.net(batch)
        loss, nll = self.model.loss(
            batch, label_smoothing=self.cfg.label_smoothing, features=features, products=self.products
        )
        ntok = batch.ntokens  # a count over the batch: once per step
        self.optimizer.zero_grad(set_to_none=True)
        (loss / ntok).backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm or float("inf"))
        finite = bool(torch.isfinite(loss) and torch.isfinite(norm))
        return StepResult(ntok, nll.item() / ntok, finite)

    def update(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()

    def skip(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, batch: Batch, lr: float) -> StepResult:
        result = self.backward(batch)
        self.update(lr) if result.finite else self.skip()
        return result

    def restart(self, seed: int) -> None:
        """Fresh weights, drawn as a new model's are with `seed`, and a fresh optimizer: the run starts
        over in the same process (after an attention collapse). Every process draws the same weights."""
        torch.manual_seed(seed)
        self.model.init_weights()
        self.optimizer.state.clear()  # Adam's moments and step counts, made again at the next update
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Let go of the DDP wrapper now. DDP sits in a reference cycle and holds the process
        group, so without this the group's last reference went only when the cycle collector
        ran, sometimes at interpreter exit, where Gloo's teardown aborted the process
        ("terminate called without an active exception"). The learner cannot train after it."""
        self.net = None
        gc.collect()

    def state(self, progress) -> dict[str, Any]:
        """What last.pt holds besides the weights, as plain data and tensors; `progress` is a dataclass."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "precision": self.precision,  # a resumed run keeps it, whatever a new probe would say
            "progress": asdict(progress),
            "torch_rng": torch.get_rng_state(),
            "python_rng": list(random.getstate()[1]),
        }

    def restore(self, ckpt: dict[str, Any]) -> dict[str, Any]:
        """Load weights, optimizer and RNG states from a last.pt; returns its saved progress (a dict)."""
        state = ckpt.get("train_state")
        if not state:
            raise NoTrainingState("it holds no training state to resume from (a best.pt-style file)")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.precision = state.get("precision", self.precision)
        random.setstate((3, tuple(state["python_rng"]), None))
        return state["progress"]
