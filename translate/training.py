"""Training: the loop around the updates of a :class:`~translate.learner.Learner`.

``fit`` walks the token-bucketed epochs, asks the :class:`Learner` for one update per
batch, validates every ``train.valid_every`` updates (:func:`translate.evaluation.evaluate`
with the validation's own search settings), lets :class:`~translate.schedule.EarlyStopping`
judge each score, and saves through the :class:`~translate.checkpoint.RunFolder`:
``last.pt`` holds everything a resumed run needs (model, optimizer, RNG states, data
position, counters, early-stopping state), ``best.pt`` the weights with the highest
validation BLEU. When the run ends, the finalists (the best single checkpoint, the last
weights, the mean of the last validations' weights) are decoded again with the beam that
translation uses, and the highest becomes ``best.pt``.

Under torchrun the processes meet once per step, in :func:`translate.distributed.agree`
(clock, skipped updates, stop requests, token counts), and once per validation.
"""

from __future__ import annotations

import copy
import logging
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from translate.averaging import Snapshots
from translate.batching import Examples
from translate.checkpoint import RunFolder, load_checkpoint, model_payload
from translate.config import DecodeConfig, TrainConfig
from translate.data import Split
from translate.distributed import SINGLE, Group, agree, any_of, check_in_sync, shard
from translate.evaluation import evaluate, validation_batches
from translate.learner import Learner, NoTrainingState, StepResult
from translate.runlog import MetricsLog
from translate.schedule import EarlyStopping, budget_fraction, lr_at
from translate.textfile import has_text
from translate.tokenizer import Tokenizer

if TYPE_CHECKING:
    from translate.prepared import TokenizedPairs

log = logging.getLogger(__name__)

LOG_SECONDS = 60  # a log line at least this often, whatever train.log_every says
PICTURES = 3  # validation sentences whose attention is drawn at each validation
RESTART_SEED = 1009  # a run that starts over after an attention collapse draws with seed + this x restarts


class TrainingError(RuntimeError):
    """Training cannot go on; the message names the step and what to try."""


class Interrupted(Exception):
    """Training stopped on a signal after `step`; last.pt holds the state to resume from."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step}")
        self.step = step


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
            "%s: stopping after this step (at the run's end: once the end-of-run choice is made); last.pt will "
            "hold the state to resume from",
            signal.Signals(signum).name,
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
    stopping: EarlyStopping = field(default_factory=EarlyStopping)
    tokens: int = 0
    skipped: int = 0  # updates skipped for a NaN or infinite loss or gradient
    skipped_in_row: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    done: bool = False
    choice_pending: bool = False  # done, the end-of-run choice not yet made: a resume makes it
    restarts: int = 0  # times the run started over from fresh weights (an attention collapse)
    restart_step: int = 0  # the step its current weights started from: warm-up and collapse_after count from it

    def seed(self, cfg: TrainConfig) -> int:
        """The seed of the current weights and batch order: train.seed, another after a restart."""
        return cfg.seed + RESTART_SEED * self.restarts

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Progress:
        d = dict(d)
        if "stopping" not in d:  # last.pt written before early stopping had its own record
            d["stopping"] = {k: d.pop(k) for k in asdict(EarlyStopping()) if k in d}
        return cls(**{**d, "stopping": EarlyStopping(**d["stopping"])})


def fit(
    learner: Learner,
    tokenizer: Tokenizer,
    train: Examples | TokenizedPairs,
    valid: Split,
    *,
    cfg: TrainConfig,
    run: RunFolder,
    group: Group = SINGLE,
) -> Progress:
    """Train until the budget or early stopping; resumes from run.last when the run folder says so.

    A stop signal saves last.pt and raises :class:`Interrupted`."""
    p = Progress()
    if run.resume:
        try:
            p = Progress.from_dict(learner.restore(run.take_last()))
        except NoTrainingState as err:
            raise TrainingError(f"cannot resume from {run.last}: {err}; pass overwrite=true to start over") from None
        log.info(
            "resumed from %s at step %d (epoch %d), in %s as before", run.last, p.step, p.epoch + 1, learner.precision
        )
    metrics = MetricsLog(run.path, enabled=group.is_main)
    validation = Validation(learner, tokenizer, valid, cfg=cfg, run=run, group=group, metrics=metrics)
    if p.done:
        if p.choice_pending and group.is_main:  # stopped while choosing best.pt: choose now
            log.warning("the run in %s stopped during its end-of-run choice of best.pt: making it now", run.path)
            validation.resume_choice(p)
        log.warning(
            "the run in %s is complete (step %d, %.1f minutes); a larger budget does not extend a finished run, "
            "whose learning-rate schedule has run its course: pass a new run_dir=... to train a longer run, "
            "or overwrite=true to train this one again",
            run.path,
            p.step,
            p.elapsed / 60,
        )
        return p
    _seed_dropout(p, cfg, group)
    bar = tqdm(
        total=cfg.max_steps or (int(cfg.max_time * 60) if cfg.max_time else None),
        initial=p.step if cfg.max_steps else int(p.elapsed),  # a resumed run's bar starts where it stopped
        unit="step" if cfg.max_steps else "s",
        desc="train",
        disable=None if group.is_main else True,  # None: shown on a terminal only
        dynamic_ncols=True,
    )
    with StopRequest() as stop, logging_redirect_tqdm():  # log lines printed above the bar, never through it
        interrupted = _loop(learner, train, p, validation, stop=stop, bar=bar, cfg=cfg, group=group, metrics=metrics)
    bar.close()
    if interrupted:
        run.save("last.pt", _payload(learner, tokenizer, p, with_state=True))
        raise Interrupted(p.step)
    return p


def _loop(
    learner, train, p: Progress, validation, *, stop, bar, cfg: TrainConfig, group: Group, metrics: MetricsLog
) -> bool:
    """The epochs: one update per batch, one agreement per update, validations on schedule.

    Returns True if a stop signal ended it before the run was done."""
    budget_s = cfg.max_time * 60 if cfg.max_time else None
    start = time.perf_counter() - p.elapsed
    window = Window()
    while not p.done and p.epoch < cfg.max_epochs:
        order = train.batches(
            batch_tokens=cfg.batch_tokens, generator=torch.Generator().manual_seed(p.seed(cfg) * 1000 + p.epoch)
        )
        restarted = False
        for index in shard(order, group)[p.batch_in_epoch :]:
            result = learner.backward(train.batch(index))
            # the one meeting of the processes in a step: everything below follows from its answer
            agreed = agree(
                group,
                elapsed=time.perf_counter() - start,
                nonfinite=not result.finite,
                stop=stop.signal is not None,
                tokens=result.tokens,
            )
            p.elapsed = agreed.elapsed
            p.batch_in_epoch += 1
            if agreed.nonfinite:
                _skip(learner, p, result, cfg)
            else:
                fraction = budget_fraction(cfg, p.step, p.elapsed)
                lr = lr_at(cfg, p.step + 1 - p.restart_step, fraction, p.stopping.plateau_scale)
                learner.update(lr)
                p.step, p.skipped_in_row, p.tokens = p.step + 1, 0, p.tokens + agreed.tokens
                window.tokens += agreed.tokens
                bar.update(1 if cfg.max_steps else int(p.elapsed) - bar.n)
                if p.step % cfg.log_every == 0 or window.age() >= LOG_SECONDS or p.step == 1:
                    _log_step(p, result.nll, lr, window.rate(), bar, cfg)
                    metrics.add("train", p.step, p.elapsed / 60, loss=result.nll, lr=lr, tokens_per_s=window.rate())
                    window.reset()
            out_of_time = budget_s is not None and p.elapsed >= budget_s
            out_of_steps = cfg.max_steps is not None and p.step >= cfg.max_steps
            if (not agreed.nonfinite and p.step % cfg.valid_every == 0) or out_of_time or out_of_steps:
                restarted = validation(p, final=out_of_time or out_of_steps)
                window.reset()
            if p.done:
                return False
            if agreed.stop:
                return True
            if restarted:
                _restart(learner, p, validation, cfg, group)
                break
        if not restarted:
            p.epoch += 1
            p.batch_in_epoch = 0
    if not p.done:  # epochs exhausted
        validation(p, final=True)
    return False


def _seed_dropout(p: Progress, cfg: TrainConfig, group: Group) -> None:
    """Processes after the first draw other dropout masks from here on (all hold the same weights:
    DDP copies process 0's at the start, a restart draws them alike in every process)."""
    if group.rank > 0:
        torch.manual_seed(p.seed(cfg) + 7919 * group.rank + p.step)


def _restart(learner: Learner, p: Progress, validation: Validation, cfg: TrainConfig, group: Group) -> None:
    """Start the run over from fresh weights in the rest of its budget: another seed for the
    weights and the batch order, Adam's state, warm-up, early stopping and the averaged
    snapshots anew; the step count, the clock and the log go on."""
    p.restarts += 1
    p.restart_step, p.epoch, p.batch_in_epoch = p.step, 0, 0
    p.stopping, p.skipped_in_row = EarlyStopping(), 0
    learner.restart(p.seed(cfg))
    _seed_dropout(p, cfg, group)
    if group.is_main:
        validation.snapshots.clear()
        validation.save_last(p)  # a process killed from here on resumes the fresh run, not the collapsed one
    log.info(
        "started over at step %d: fresh weights and batch order from seed %d, warm-up anew  %s",
        p.step, p.seed(cfg), time_left(p, cfg),
    )  # fmt: skip


class Window:
    """Target tokens per second since the last log line or validation."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens, self.start = 0, time.perf_counter()

    def rate(self) -> float:
        return self.tokens / max(self.age(), 1e-9)

    def age(self) -> float:
        return time.perf_counter() - self.start


def _log_step(p: Progress, nll: float, lr: float, rate: float, bar: tqdm, cfg: TrainConfig) -> None:
    bar.set_postfix(loss=f"{nll:.3f}", tok_s=f"{rate:.0f}", lr=f"{lr:.1e}")
    log.info(
        "step %d  epoch %d  loss %.3f  lr %.2e  %.0f tgt tok/s  %s",
        p.step, p.epoch + 1, nll, lr, rate, time_left(p, cfg),
    )  # fmt: skip


def time_left(p: Progress, cfg: TrainConfig) -> str:
    """Training time so far and, when there is a budget (time or steps), the estimated time to its end."""
    left = []
    if cfg.max_time:
        left.append(cfg.max_time * 60 - p.elapsed)
    if cfg.max_steps and p.step:
        left.append((cfg.max_steps - p.step) * p.elapsed / p.step)
    eta = f", ETA {_clock(max(min(left), 0))}" if left else ""
    return f"[elapsed {_clock(p.elapsed)}{eta}]"


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def _skip(learner: Learner, p: Progress, result: StepResult, cfg: TrainConfig) -> None:
    """Leave the weights alone after a non-finite loss; stop after too many in a row."""
    learner.skip()
    p.skipped += 1
    p.skipped_in_row += 1
    log.warning(
        "step %d: loss or gradient is not finite (nll %s); update skipped (%d so far)",
        p.step + 1,
        result.nll,
        p.skipped,
    )
    if p.skipped_in_row >= cfg.max_nonfinite:
        raise TrainingError(
            f"{p.skipped_in_row} non-finite losses in a row at step {p.step + 1}: training stopped. "
            f"Try a lower train.lr (now {cfg.peak_lr}), train.precision=fp32, or check the data for broken pairs; "
            f"last.pt holds the last good state."
        )


def _payload(learner: Learner, tokenizer: Tokenizer, p: Progress, *, with_state: bool) -> dict[str, Any]:
    """best.pt (weights, counters, latest metrics) or, with the training state, last.pt."""
    payload = {
        **model_payload(learner.model, tokenizer),
        "step": p.step,
        "epoch": p.epoch,
        "metrics": dict(p.history[-1]) if p.history else {},
    }
    return {**payload, "train_state": learner.state(p)} if with_state else payload


class Validation:
    """Process 0 scores the model, early stopping judges, both checkpoints are saved; the
    other processes wait for the verdict and check that their weights still agree."""

    def __init__(
        self,
        learner: Learner,
        tokenizer: Tokenizer,
        valid: Split,
        *,
        cfg: TrainConfig,
        run: RunFolder,
        group: Group = SINGLE,
        metrics: MetricsLog | None = None,
    ) -> None:
        self.learner, self.tokenizer, self.valid = learner, tokenizer, valid
        self.cfg, self.run, self.group = cfg, run, group
        self.metrics = metrics or MetricsLog(run.path, enabled=False)
        # the sentences whose attention is drawn at every validation: the first few with text
        self.pictured = [i for i, line in enumerate(valid.src) if has_text(line)][:PICTURES]
        self.search = DecodeConfig(beam_size=cfg.valid_beam, batch_size=cfg.valid_batch_size)
        self._batches: list | None = None  # tokenized and batched once, reused by every validation
        self.snapshots = Snapshots(run.path / "snapshots", cfg.average)

    def __call__(self, p: Progress, *, final: bool) -> bool:
        """Validate; True if the run is to start over from fresh weights (an attention collapse)."""
        restart = self._validate(p, final=final) if self.group.is_main else False
        p.done, restart = any_of(self.group, p.done or final, restart)
        check_in_sync(self.learner.model, self.group)
        return restart

    def _score(
        self, model: torch.nn.Module, *, search: DecodeConfig | None = None, exact: bool = False
    ) -> tuple[dict[str, float], str]:
        """Validation loss, perplexity, BLEU and chrF of `model`, and the BLEU signature:
        decoded with `search` (default: the validation's), in the training precision or,
        `exact`, in fp32 as translation decodes by default."""
        if self._batches is None:
            self._batches = validation_batches(
                self.tokenizer,
                self.valid.src,
                self.valid.tgt,
                batch_tokens=self.cfg.batch_tokens,
                device=self.learner.device,
            )
        with tqdm(total=len(self.valid), desc="validation", unit=" lines", leave=False, disable=None) as bar:
            return evaluate(
                model,
                self.tokenizer,
                self.valid.src,
                self.valid.tgt,
                batches=self._batches,
                search=search or self.search,
                autocast=nullcontext if exact else self.learner.autocast,
                products=torch.float32 if exact else self.learner.products,
                progress=bar.update,
            )

    def _validate(self, p: Progress, *, final: bool) -> bool:
        cfg = self.cfg
        m, signature = self._score(self.learner.model)
        p.history.append({"step": p.step, **m, "elapsed_min": p.elapsed / 60})
        self.metrics.add("valid", p.step, p.elapsed / 60, **m)
        self.metrics.draw()
        self._draw_attention(p.step)
        improved = p.stopping.update(m["valid_bleu"], p.step, cfg)
        if p.stopping.should_stop(cfg):
            log.info("early stopping: no BLEU gain in %d validations", p.stopping.bad_validations)
            p.done = True
        log.info(
            "validation at step %d: loss %.3f  ppl %.2f  BLEU %.2f  chrF %.2f  attention on EOS %.2f%s  %s  (%s)",
            p.step,
            m["valid_loss"],
            m["valid_ppl"],
            m["valid_bleu"],
            m["valid_chrf"],
            m.get("valid_eos_attention", 0.0),
            "  *best*" if improved else "",
            time_left(p, cfg),
            signature,
        )
        p.done = p.done or final
        restart = self._judge_attention(p, m.get("valid_eos_attention"))
        weights = _payload(self.learner, self.tokenizer, p, with_state=False)
        if improved:
            self.run.save("best.pt", weights)
        self.snapshots.add(p.step, weights)
        finalists = self._finalists(p, last=weights) if p.done else {}
        # last.pt says whether a choice is still to be made, so a process stopped during it makes it on resume
        p.choice_pending = len(finalists) > 1
        self.save_last(p)
        if p.choice_pending:
            self._final_choice(p, finalists)
        return restart

    def save_last(self, p: Progress) -> None:
        """last.pt: the weights, the training state and `p`, to resume from."""
        self.run.save("last.pt", _payload(self.learner, self.tokenizer, p, with_state=True))

    def _judge_attention(self, p: Progress, share: float | None) -> bool:
        """Warn of a collapsed attention (train.collapse_share, from train.collapse_after updates of
        the current weights on); True if the run is to start over: train.on_collapse=restart, at
        the first judged validation, not yet restarted, at least half the budget left."""
        cfg = self.cfg
        updates = p.step - p.restart_step
        if share is None or share <= cfg.collapse_share or updates < cfg.collapse_after:
            return False
        hindrance = next(
            (why for why, holds in (
                ("train.on_collapse=warn", cfg.on_collapse == "warn"),
                ("it started over once already", p.restarts > 0),
                ("past its first judged validation", updates >= cfg.collapse_after + cfg.valid_every),
                ("the run is ending", p.done),
                ("less than half the budget left", budget_fraction(cfg, p.step, p.elapsed) > 0.5),
            ) if holds),
            None,
        )  # fmt: skip
        if hindrance is None:
            then = "starting over from fresh weights in the rest of the budget (train.on_collapse=restart)"
        else:
            then = f"try another train.seed or a lower train.lr (now {cfg.peak_lr:g}); no restart: {hindrance}"
        log.warning(
            "step %d: the attention collapsed onto the source's end: %.2f of the validation translations' "
            "attention rests on EOS (above train.collapse_share=%g; aligning models put about 0.1 there), so the "
            "model translates from the encoder's final state alone and its BLEU stays far down (README, Results: "
            '"An attention collapse"): %s',
            p.step, share, cfg.collapse_share, then,
        )  # fmt: skip
        return hindrance is None

    def _finalists(self, p: Progress, *, last: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The candidates for best.pt at the end of the run, by name: the best single checkpoint,
        the last weights (`last`, the final validation's model file) where they differ, and the
        mean of the last validations' weights."""
        best, finalists = self.run.path / "best.pt", {}
        if best.exists():
            finalists[f"the best single checkpoint (step {p.stopping.best_step})"] = load_checkpoint(best)
        if p.stopping.best_step != p.step or not finalists:
            finalists[f"the last weights (step {p.step})"] = last
        found = self.snapshots.average()
        if found is not None:
            weights, steps = found
            name = f"the mean weights of the last {len(steps)} validations (steps {', '.join(map(str, steps))})"
            finalists[name] = {**last, "model": weights, "averaged_steps": steps}
        return finalists

    def resume_choice(self, p: Progress) -> None:
        """Make the end-of-run choice of a run whose process stopped during it (`p` restored from
        last.pt, the learner holding the last weights). If best.pt already holds the choice (the
        process stopped between the two saves), only last.pt learns it."""
        finalists = self._finalists(p, last=_payload(self.learner, self.tokenizer, p, with_state=False))
        made = next((f["metrics"] for f in finalists.values() if "final_choice" in f), None)  # best.pt's, if any
        if made is not None:
            self._record_choice(p, made)
        else:
            self._final_choice(p, finalists)

    def _final_choice(self, p: Progress, finalists: dict[str, dict[str, Any]]) -> None:
        """At the end of the run: score the `finalists` (model files by name, see `_finalists`)
        on validation again, decoded with train.final_beam as translation decodes (fp32, the
        default length penalty), and make the highest best.pt. A tie keeps the earlier finalist,
        the best single checkpoint first."""
        start = time.perf_counter()
        search = replace(self.search, beam_size=self.cfg.final_beam)
        model = copy.deepcopy(self.learner.model)
        scores = {}
        for name, payload in finalists.items():
            model.load_state_dict(payload["model"])
            scores[name], _ = self._score(model, search=search, exact=True)
        chosen = max(scores, key=lambda name: scores[name]["valid_bleu"])  # the first of equals
        payload = finalists[chosen]
        # its step's record (step, clock) with the scores of the choice
        record = {**payload["metrics"], "step": payload["step"], **scores[chosen], "valid_beam": search.beam_size}
        if "averaged_steps" in payload:
            record["averaged_steps"] = payload["averaged_steps"]
        choice = {"beam": search.beam_size, "chosen": chosen, "bleu": {n: m["valid_bleu"] for n, m in scores.items()}}
        # the whole run's minutes went into choosing it, whichever step it comes from (the benchmark's peer
        # trains as long: translate.benchmark.model_minutes)
        run_minutes = p.elapsed / 60
        self.run.save("best.pt", {**payload, "metrics": record, "final_choice": choice, "run_minutes": run_minutes})
        self.metrics.add("valid_final", p.step, p.elapsed / 60, **scores[chosen])
        self._record_choice(p, record)
        log.info(
            "end-of-run choice, validation BLEU with beam %d: %s -> best.pt is %s (%.0f s)",
            search.beam_size,
            "; ".join(f"{name}: {m['valid_bleu']:.2f}" for name, m in scores.items()),
            chosen,
            time.perf_counter() - start,
        )

    def _record_choice(self, p: Progress, record: dict[str, Any]) -> None:
        """The run's progress takes the chosen model's record as its best, and last.pt knows it."""
        p.history.append(record)
        p.stopping.best_bleu, p.stopping.best_step = record["valid_bleu"], record["step"]
        p.choice_pending = False
        self.save_last(p)

    def _draw_attention(self, step: int) -> None:
        """attention/step<N>/valid<line>.png: the same validation sentences at every validation."""
        from translate.formats import draw_heatmap
        from translate.translator import Translator

        if not self.pictured:
            return
        translator = Translator(self.learner.model, self.tokenizer, self.search)
        results = translator.translate_detailed([self.valid.src[i] for i in self.pictured], n_best=1)
        for i, result in zip(self.pictured, results):
            if result.hypotheses:
                path = self.run.path / "attention" / f"step{step}" / f"valid{i + 1}.png"
                draw_heatmap(path, result, title=f"validation line {i + 1}, step {step}")
