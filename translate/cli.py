"""Command-line layer: the only place that sees the whole configuration.

python -m translate train key=value ...     (make train ARGS="key=value ...")
python -m translate bleu  key=value ...     (make bleu ARGS="...")
python -m translate bench key=value ...     (make bench ARGS="...")
translate --model PATH [INPUT] [-o OUTPUT] [--beam N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from translate.config import Config, ConfigError, DecodeConfig, register_configs, to_config

if TYPE_CHECKING:
    from translate.distributed import Group

log = logging.getLogger("translate")

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# keys that may change between a run and its resumption (budgets, logging, decoding, where data comes from)
RESUMABLE_KEYS = {
    "train.max_time",
    "train.max_steps",
    "train.max_epochs",
    "train.patience",
    "train.log_every",
    "train.threads",
    "data.path",
    "data.hub_id",
    "data.format",
    "device",
    "overwrite",
    "run_dir",
}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_identity(cfg: Config) -> dict[str, Any]:
    """The configuration that defines a run, as plain data (decode and bench settings excluded)."""
    flat = _flatten(asdict(cfg))
    return {k: v for k, v in flat.items() if k not in RESUMABLE_KEYS and not k.startswith(("decode.", "bench."))}


def setup_torch(cfg: Config) -> torch.device:
    from translate.translator import device_for

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    return device_for(cfg.device)


def train(cfg: Config) -> dict[str, Any]:
    """Download -> SentencePiece -> train; returns the best validation metrics.

    Under torchrun (``torchrun --nproc_per_node=N -m translate train ...``) each process
    runs this with its share of the batches (translate/distributed.py)."""
    from translate import distributed

    group, device = distributed.init(setup_torch(cfg))
    try:
        return _train(cfg, group, device)
    finally:
        distributed.shutdown(group)


def _train(cfg: Config, group: Group, device: torch.device) -> dict[str, Any]:
    from translate.checkpoint import load_checkpoint
    from translate.data import prepare
    from translate.distributed import barrier
    from translate.model import Seq2Seq, count_parameters
    from translate.training import Trainer, tokenize_pairs

    run_dir = Path(cfg.run_dir)
    identity = run_identity(cfg)
    last = run_dir / "last.pt"
    resume = False
    if last.exists():
        previous = load_checkpoint(last).get("run_config", {})
        barrier(group)  # every process has read it before process 0 may delete it
        if cfg.overwrite:
            log.warning("overwrite=true: discarding the run in %s", run_dir)
            for name in ("last.pt", "best.pt"):
                if group.is_main:
                    (run_dir / name).unlink(missing_ok=True)
        elif previous != identity:
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            raise SystemExit(
                f"error: {run_dir} holds a run with a different configuration ({', '.join(changed[:8])}). "
                f"Choose another run_dir=..., or pass overwrite=true to replace it."
            )
        else:
            resume = True

    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    if not group.is_main:
        barrier(group)  # process 0 downloads and trains SentencePiece; the others then reuse them
    corpus, tokenizer = prepare(cfg.data)
    if group.is_main:
        barrier(group)
    train_ex = tokenize_pairs(corpus.train, tokenizer, cfg.data.max_len)
    model = Seq2Seq(cfg.model, tokenizer.vocab_size).to(device)
    log.info(
        "model: %s decoder, %s attention, %d parameters, vocabulary %d, device %s",
        cfg.model.decoder,
        cfg.model.attention,
        count_parameters(model),
        tokenizer.vocab_size,
        device,
    )
    trainer = Trainer(
        model, tokenizer, cfg.train, cfg.decode, run_dir=run_dir, device=device, run_config=identity, group=group
    )
    if resume:
        trainer.resume(last)
        if trainer.progress.done:
            log.warning(
                "the run in %s is complete (step %d, %.1f minutes); a larger budget does not extend a finished run, "
                "whose learning-rate schedule has run its course: pass a new run_dir=... to train a longer run, "
                "or overwrite=true to train this one again",
                run_dir,
                trainer.progress.step,
                trainer.progress.elapsed / 60,
            )
    if group.rank > 0:  # the same initial weights (DDP copies process 0's), other dropout masks
        torch.manual_seed(cfg.train.seed + 7919 * group.rank + trainer.progress.step)
    progress = trainer.fit(train_ex, corpus.valid)
    if trainer.interrupted:
        log.warning("stopped at step %d; %s holds the state: run the same command again to resume", progress.step, last)
        raise SystemExit(130)
    best = next((h for h in progress.history if h["step"] == progress.best_step), {})
    log.info("best validation BLEU %.2f at step %d -> %s", progress.best_bleu, progress.best_step, run_dir / "best.pt")
    return best


def bleu(cfg: Config) -> dict[str, float]:
    """Decode the test split with the run's checkpoint and print sacreBLEU BLEU and chrF."""
    from translate.data import load_corpus
    from translate.evaluation import score
    from translate.translator import Translator

    device = setup_torch(cfg)
    ckpt = checkpoint_path(cfg)
    corpus = load_corpus(cfg.data)
    translator = Translator.from_checkpoint(str(ckpt), cfg.decode, device=str(device))
    hyps = list(progress_bar(translator.translate(corpus.test.src), total=len(corpus.test.src)))
    int8 = ".int8" if cfg.decode.int8 else ""
    out = ckpt.with_name(f"{cfg.data.test_name}.{ckpt.stem}.beam{cfg.decode.beam_size}{int8}.{cfg.data.tgt_lang}")
    out.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    s = score(hyps, corpus.test.tgt)
    print(f"hypotheses: {out}")
    print(s.report(f"{cfg.data.test_name} {cfg.data.src_lang}-{cfg.data.tgt_lang}"))
    return {"bleu": s.bleu, "chrf": s.chrf}


def checkpoint_path(cfg: Config) -> Path:
    name = cfg.decode.checkpoint
    path = Path(cfg.run_dir) / f"{name}.pt" if name in ("best", "last") else Path(name)
    if not path.is_file():
        raise SystemExit(f"error: no checkpoint at {path}; train first (make train) or set decode.checkpoint=PATH")
    return path


def bench(cfg: Config) -> dict:
    """Throughput, decoding speed, time-to-BLEU and the peer side by side (translate/benchmark.py)."""
    from translate.benchmark import run

    setup_torch(cfg)
    return run(cfg)


COMMANDS = {"train": train, "bleu": bleu, "bench": bench}


def hydra_main(command: str, argv: list[str]) -> None:
    """Compose the configuration with Hydra (validated against the dataclasses), then run."""
    import hydra

    register_configs()

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def _main(dcfg) -> None:
        from translate.checkpoint import CheckpointError
        from translate.data import DataError
        from translate.training import TrainingError

        try:
            COMMANDS[command](to_config(dcfg))
        except (ConfigError, DataError, CheckpointError, TrainingError) as err:
            log.error("%s", err)
            raise SystemExit(f"error: {err}") from None

    sys.argv = [f"translate {command}", *argv, f"hydra.job.name={command}"]
    _main()


# ---- translate: text in, text out ------------------------------------------------------


class InputError(Exception):
    pass


def read_input(stream, name: str, errors: str):
    """Yield lines of a binary stream as text, without line ends; a bad byte names line and offset."""
    for number, raw in enumerate(stream, 1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
            if not raw:  # a file holding only a byte-order mark holds no line
                return
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if errors == "replace":
                yield raw.decode("utf-8", errors="replace")
            else:
                raise InputError(
                    f"{name}: line {number}: invalid UTF-8 at byte {err.start} of the line; "
                    "fix the encoding or pass --errors replace"
                ) from None


def progress_bar(lines, total: int | None = None):
    """A line counter on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(lines, total=total, unit=" lines", desc="translate", disable=None, file=sys.stderr, leave=False)


def write_lines(f, lines) -> None:
    for line in lines:
        f.write(line.encode("utf-8") + b"\n")
    f.flush()


def translate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="translate", description="Translate a text file line by line.")
    parser.add_argument("--model", required=True, help="checkpoint file (best.pt)")
    parser.add_argument("input", nargs="?", help="input text file (default: stdin)")
    parser.add_argument("-o", "--output", help="output file (default: stdout)")
    parser.add_argument("--beam", type=int, default=DecodeConfig.beam_size, help="beam size; 1 = greedy")
    parser.add_argument("--batch-size", type=int, default=DecodeConfig.batch_size, help="sentences per batch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--int8", action="store_true", help="decode with int8 matrix products (CPU only, faster)")
    parser.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default="strict",
        help="invalid UTF-8 input: stop with an error (strict) or use U+FFFD (replace)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)

    from translate.checkpoint import CheckpointError, atomic_write
    from translate.translator import Translator, device_for

    if args.beam < 1 or args.batch_size < 1:
        parser.error("--beam and --batch-size must be at least 1")
    try:
        device = device_for(args.device)
        cfg = replace(DecodeConfig(), beam_size=args.beam, batch_size=args.batch_size, int8=args.int8)
        translator = Translator.from_checkpoint(args.model, cfg, device=str(device))
        src = open(args.input, "rb") if args.input else sys.stdin.buffer
        with src:
            lines = progress_bar(translator.translate(read_input(src, args.input or "<stdin>", args.errors)))
            if args.output:  # streamed into a temporary file, renamed when complete
                atomic_write(args.output, lambda f: write_lines(f, lines))
            else:
                write_lines(sys.stdout.buffer, lines)
    except (CheckpointError, InputError, RuntimeError, OSError) as err:
        print(f"translate: error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = (
        "usage: python -m translate {train,bleu,bench} [key=value ...]\n"
        "       python -m translate translate --model PATH [INPUT] [-o OUTPUT] [--beam N] [--int8]"
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "translate":
        return translate_main(rest)
    if command not in COMMANDS:
        print(f"unknown command '{command}'\n{usage}", file=sys.stderr)
        return 2
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    hydra_main(command, rest)
    return 0
