"""Training: token-bucketed batches, Adam with warm-up and decay, validation by BLEU.

The loop keeps everything it needs to continue in ``last.pt`` (model, optimizer, RNG
states, data position, counters, best score, early-stopping state); starting the same
run again resumes from it. ``best.pt`` holds the weights with the highest validation
BLEU. Both are written atomically.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from translate.batching import make_batch, token_batches
from translate.checkpoint import load_checkpoint, model_payload, save_checkpoint
from translate.config import ConfigError, DecodeConfig, TrainConfig
from translate.data import Split
from translate.distributed import SINGLE, Group, any_of, check_in_sync, maximum, shard, total, wrap
from translate.evaluation import score
from translate.loss import output_layer_loss
from translate.model import Seq2Seq
from translate.tokenizer import Tokenizer
from translate.translator import Translator

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on; the message names the step and what to try."""


@dataclass
class Examples:
    """Tokenized training pairs (subword ids, no specials)."""

    src: list[list[int]]
    tgt: list[list[int]]


def tokenize_pairs(split: Split, tokenizer: Tokenizer, max_len: int) -> Examples:
    """Tokenize a split, dropping empty pairs and pairs over `max_len` subwords (counted in the log)."""
    src, tgt = tokenizer.encode(split.src), tokenizer.encode(split.tgt)
    keep = [i for i in range(len(src)) if src[i] and tgt[i] and len(src[i]) <= max_len and len(tgt[i]) <= max_len]
    empty = sum(1 for s, t in zip(src, tgt) if not s or not t)
    if len(keep) < len(src):
        log.info(
            "dropped %d of %d pairs: %d empty, %d over %d subwords",
            len(src) - len(keep),
            len(src),
            empty,
            len(src) - len(keep) - empty,
            max_len,
        )
    return Examples([src[i] for i in keep], [tgt[i] for i in keep])


def lr_at(cfg: TrainConfig, step: int, progress: float, plateau_scale: float = 1.0) -> float:
    """Learning rate at `step` (1-based), `progress` in [0, 1] of the step or time budget.

    Linear warm-up over `warmup_steps`, then: cosine or linear decay to
    `min_lr_ratio * lr` by the end of the budget; rsqrt decay (Vaswani et al. 2017);
    constant; or plateau (scaled down when validation BLEU stalls).
    """
    warm = min(1.0, step / max(1, cfg.warmup_steps))
    progress = min(max(progress, 0.0), 1.0)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        decay = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.schedule == "linear":
        decay = floor + (1 - floor) * (1 - progress)
    elif cfg.schedule == "rsqrt":
        decay = math.sqrt(max(1, cfg.warmup_steps) / max(step, cfg.warmup_steps, 1))
    elif cfg.schedule in ("constant", "plateau"):
        decay = plateau_scale
    else:
        raise ConfigError(f"train.schedule must be cosine, linear, rsqrt, constant or plateau, not '{cfg.schedule}'")
    return cfg.lr * warm * decay


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 where the hardware does bf16 fast (checked at run time), else fp32."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision must be auto, bf16 or fp32, not '{precision}'")
    if device.type == "cuda":
        fast = torch.cuda.is_bf16_supported()
    else:
        fast = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if precision == "bf16" and not fast:
        log.warning("train.precision=bf16 but this %s has no fast bf16 arithmetic; expect it to be slow", device.type)
    return "bf16" if precision == "bf16" or (precision == "auto" and fast) else "fp32"


def autocast_for(precision: str, device: torch.device):
    """A bf16 autocast context for precision bf16, a null context for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


class StopRequest:
    """SIGINT / SIGTERM ask training to stop after the current step and save last.pt.

    Stopping between steps keeps the saved state consistent, so the run resumes exactly;
    a second Ctrl-C aborts at once.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning(
            "%s: stopping after this step; last.pt will hold the state to resume from", signal.Signals(signum).name
        )

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Progress:
    """Everything, besides model and optimizer, that a resumed run must restore."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed: float = 0.0  # seconds of training so far, across resumes
    best_bleu: float = -1.0
    best_step: int = 0
    bad_validations: int = 0
    plateau_scale: float = 1.0
    tokens: int = 0
    skipped: int = 0  # updates skipped for a NaN or infinite loss or gradient
    skipped_in_row: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    done: bool = False


class Trainer:
    def __init__(
        self,
        model: Seq2Seq,
        tokenizer: Tokenizer,
        cfg: TrainConfig,
        decode: DecodeConfig,
        *,
        run_dir: Path,
        device: torch.device,
        run_config: dict[str, Any],
        group: Group = SINGLE,
    ) -> None:
        self.model, self.tokenizer, self.cfg, self.decode = model, tokenizer, cfg, decode
        self.group = group  # torchrun's processes; process 0 validates, logs and saves
        self.net = wrap(model, group)  # model.features, under DDP when distributed
        self.run_dir, self.device, self.run_config = Path(run_dir), device, run_config
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
        )
        self.progress = Progress()
        self.interrupted = False
        self._stopping = False
        self.budget_s = cfg.max_time * 60 if cfg.max_time else None
        self._valid_batches: list | None = None  # tokenized and batched once, reused by every validation
        self.precision = resolve_precision(cfg.precision, device)
        self.autocast = lambda: autocast_for(self.precision, device)

    # ---- checkpoints -------------------------------------------------------------
    def _payload(self, with_state: bool) -> dict[str, Any]:
        p = self.progress
        payload = {
            **model_payload(self.model, self.tokenizer),
            "step": p.step,
            "epoch": p.epoch,
            "metrics": dict(p.history[-1]) if p.history else {},
            "run_config": self.run_config,
        }
        if with_state:
            payload["train_state"] = {
                "optimizer": self.optimizer.state_dict(),
                "progress": asdict(p),
                "torch_rng": torch.get_rng_state(),
                "python_rng": list(random.getstate()[1]),
            }
        return payload

    def save(self, name: str, with_state: bool) -> None:
        if self.group.is_main:
            save_checkpoint(self.run_dir / name, self._payload(with_state))

    def resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        state = ckpt["train_state"]
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.progress = Progress(**state["progress"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate((3, tuple(state["python_rng"]), None))
        log.info("resumed from %s at step %d (epoch %d)", path, self.progress.step, self.progress.epoch + 1)

    # ---- the loop ----------------------------------------------------------------
    def fit(self, train: Examples, valid: Split) -> Progress:
        """Train until the budget, early stopping or a stop signal; returns the progress."""
        cfg, p, budget_s = self.cfg, self.progress, self.budget_s
        bar = tqdm(
            total=cfg.max_steps or (int(budget_s) if budget_s else None),
            initial=0,
            unit="step" if cfg.max_steps else "s",
            desc="train",
            disable=None if self.group.is_main else True,
            dynamic_ncols=True,
        )
        start = time.perf_counter() - p.elapsed
        with StopRequest() as stop:
            self._loop(train, valid, stop, start, bar)
        bar.close()
        self.interrupted = self._stopping and not p.done
        if self.interrupted:
            p.elapsed = time.perf_counter() - start
            self.save("last.pt", with_state=True)
        return p

    def _loop(self, train: Examples, valid: Split, stop: StopRequest, start: float, bar: tqdm) -> None:
        cfg, p, budget_s = self.cfg, self.progress, self.budget_s
        lengths = ([len(s) for s in train.src], [len(t) for t in train.tgt])
        window_tokens, window_start = 0, time.perf_counter()
        while not p.done and p.epoch < cfg.max_epochs:
            gen = torch.Generator().manual_seed(cfg.seed * 1000 + p.epoch)
            batches = shard(token_batches(*lengths, batch_tokens=cfg.batch_tokens, generator=gen), self.group)
            for index in batches[p.batch_in_epoch :]:
                # the schedule follows the slowest clock, so that every process uses the same learning rate
                (p.elapsed,) = maximum(self.group, time.perf_counter() - start)
                progress = (p.step / cfg.max_steps) if cfg.max_steps else (p.elapsed / budget_s if budget_s else 0.0)
                ntok = self.train_step(
                    make_batch([train.src[i] for i in index], [train.tgt[i] for i in index]), progress
                )
                p.batch_in_epoch += 1
                if not ntok:  # update skipped (non-finite loss)
                    continue
                window_tokens += ntok
                p.tokens += ntok
                bar.update(1 if cfg.max_steps else int(time.perf_counter() - start) - bar.n)
                if p.step % cfg.log_every == 0:
                    rate = total(self.group, window_tokens) / (time.perf_counter() - window_start)
                    bar.set_postfix(loss=f"{self._last_loss:.3f}", tok_s=f"{rate:.0f}", lr=f"{self._last_lr:.1e}")
                    log.info(
                        "step %d  epoch %d  loss %.3f  lr %.2e  %.0f tgt tok/s",
                        p.step,
                        p.epoch + 1,
                        self._last_loss,
                        self._last_lr,
                        rate,
                    )
                    window_tokens, window_start = 0, time.perf_counter()
                out_of_time = budget_s is not None and time.perf_counter() - start >= budget_s
                out_of_steps = cfg.max_steps is not None and p.step >= cfg.max_steps
                # every process stops at the same step, whichever clock or signal came first
                out_of_time, self._stopping = any_of(self.group, out_of_time, stop.signal is not None)
                if p.step % cfg.valid_every == 0 or out_of_time or out_of_steps:
                    p.elapsed = time.perf_counter() - start
                    self._validate_all(valid, final=out_of_time or out_of_steps)
                    window_tokens, window_start = 0, time.perf_counter()
                if p.done or out_of_time or out_of_steps:
                    p.done = True
                    break
                if self._stopping:
                    return
            else:
                p.epoch += 1
                p.batch_in_epoch = 0
        if not p.done:  # epochs exhausted
            self._validate_all(valid, final=True)
            p.done = True

    def _validate_all(self, valid: Split, *, final: bool) -> None:
        """Process 0 validates (and may stop early); the others wait for its verdict."""
        p = self.progress
        if self.group.is_main:
            self.validate(valid, final=final)
        (p.done,) = any_of(self.group, p.done or final)
        check_in_sync(self.model, self.group)

    def train_step(self, batch, progress: float) -> int:
        self.net.train()
        batch = batch.to(self.device)
        p = self.progress
        lr = lr_at(self.cfg, p.step + 1, progress, p.plateau_scale)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast():
            features = self.net(batch)
        ntok = batch.ntokens
        loss, nll = output_layer_loss(features, self.model.output_weight, batch.tgt_out, self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        (loss / ntok).backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm or float("inf"))
        (nonfinite,) = any_of(self.group, not (torch.isfinite(loss) and torch.isfinite(norm)))
        if nonfinite:
            self._skip(loss.item())
            return 0
        p.skipped_in_row = 0
        self.optimizer.step()
        p.step += 1
        self._last_loss, self._last_lr = nll.item() / ntok, lr
        return ntok

    def _skip(self, loss: float) -> None:
        """Leave the weights alone after a non-finite loss; stop after too many in a row."""
        p = self.progress
        p.skipped += 1
        p.skipped_in_row += 1
        self.optimizer.zero_grad(set_to_none=True)
        log.warning("step %d: loss or gradient is %s; update skipped (%d so far)", p.step + 1, loss, p.skipped)
        if p.skipped_in_row >= self.cfg.max_nonfinite:
            raise TrainingError(
                f"{p.skipped_in_row} non-finite losses in a row at step {p.step + 1}: training stopped. "
                f"Try a lower train.lr (now {self.cfg.lr}), train.precision=fp32, or check the data for broken pairs; "
                f"last.pt holds the last good state."
            )

    @torch.no_grad()
    def validate(self, valid: Split, *, final: bool) -> dict[str, float]:
        """Loss, perplexity and BLEU on the validation split; saves last (and best) checkpoints."""
        p, cfg = self.progress, self.cfg
        self.model.eval()
        if self._valid_batches is None:
            src, tgt = self.tokenizer.encode(valid.src), self.tokenizer.encode(valid.tgt)
            self._valid_batches = [
                make_batch([src[i] for i in index], [tgt[i] for i in index]).to(self.device)
                for index in token_batches([len(s) for s in src], [len(t) for t in tgt], batch_tokens=cfg.batch_tokens)
            ]
        nll_sum, ntok = 0.0, 0
        for batch in self._valid_batches:
            with self.autocast():
                features = self.model.features(batch)
            nll_sum += float(output_layer_loss(features, self.model.output_weight, batch.tgt_out, 0.0)[1])
            ntok += batch.ntokens
        decode = replace(self.decode, beam_size=cfg.valid_beam)
        with self.autocast():
            hyps = list(Translator(self.model, self.tokenizer, decode).translate(valid.src))
        s = score(hyps, valid.tgt)
        loss = nll_sum / max(ntok, 1)
        metrics = {
            "step": p.step,
            "valid_loss": loss,
            "valid_ppl": math.exp(min(loss, 50)),
            "valid_bleu": s.bleu,
            "valid_chrf": s.chrf,
            "elapsed_min": p.elapsed / 60,
        }
        p.history.append(metrics)
        improved = s.bleu > p.best_bleu
        if improved:
            p.best_bleu, p.best_step, p.bad_validations = s.bleu, p.step, 0
        else:
            p.bad_validations += 1
            if cfg.schedule == "plateau" and p.bad_validations % cfg.plateau_patience == 0:
                p.plateau_scale *= cfg.plateau_factor
        if cfg.patience and p.bad_validations >= cfg.patience:
            log.info("early stopping: no BLEU gain in %d validations", p.bad_validations)
            p.done = True
        log.info(
            "validation at step %d: loss %.3f  ppl %.2f  BLEU %.2f  chrF %.2f%s  (%s)",
            p.step,
            loss,
            metrics["valid_ppl"],
            s.bleu,
            s.chrf,
            "  *best*" if improved else "",
            s.bleu_signature,
        )
        p.done = p.done or final
        if improved:
            self.save("best.pt", with_state=False)
        self.save("last.pt", with_state=True)
        return metrics
