"""Command-line layer: the only place that sees the whole configuration.

python -m translate train key=value ...     (make train ARGS="key=value ...")
python -m translate bleu  key=value ...     (make bleu ARGS="...")
python -m translate bench key=value ...     (make bench ARGS="...")
translate --model PATH [INPUT] [-o OUTPUT] [--beam N] [--device auto|cpu|cuda] [--int8]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from translate.config import Config, ConfigError, DecodeConfig, register_configs, to_config

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
    """The configuration that defines a run, as plain data (decode settings excluded)."""
    flat = _flatten(asdict(cfg))
    return {k: v for k, v in flat.items() if k not in RESUMABLE_KEYS and not k.startswith("decode.")}


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
    from translate.checkpoint import RunFolder
    from translate.data import DataError, prepare, tokenize_pairs
    from translate.learner import Learner
    from translate.model import Seq2Seq, count_parameters
    from translate.training import Interrupted, fit

    group, device = distributed.init(setup_torch(cfg))
    sync = lambda: distributed.barrier(group)  # noqa: E731
    try:
        with RunFolder.open(
            cfg.run_dir, run_identity(cfg), overwrite=cfg.overwrite, is_main=group.is_main, sync=sync
        ) as run:
            torch.manual_seed(cfg.train.seed)
            random.seed(cfg.train.seed)
            if not group.is_main:
                sync()  # process 0 downloads and trains SentencePiece; the others then reuse them
            corpus, tokenizer = prepare(cfg.data)
            if group.is_main:
                sync()
            if not len(corpus.valid):  # found now, not after the first validation's worth of updates
                where = cfg.data.path or cfg.data.hub_id
                raise DataError(
                    f"the validation split of {where} is empty: training needs it to choose best.pt "
                    "(data.valid_split / data.valid_prefix)"
                )
            model = Seq2Seq(cfg.model, tokenizer.vocab_size).to(device)
            log.info(
                "model: %s decoder, %s attention, %d parameters, vocabulary %d, device %s",
                cfg.model.decoder,
                cfg.model.attention,
                count_parameters(model),
                tokenizer.vocab_size,
                device,
            )
            learner = Learner(model, cfg.train, device=device, group=group)
            examples = tokenize_pairs(corpus.train, tokenizer, cfg.data.max_len)
            progress = fit(learner, tokenizer, examples, corpus.valid, cfg=cfg.train, run=run, group=group)
    except Interrupted as stop:
        log.warning(
            "stopped at step %d; %s holds the state: run the same command again to resume",
            stop.step,
            Path(cfg.run_dir) / "last.pt",
        )
        raise SystemExit(130) from None
    finally:
        distributed.shutdown(group)
    best = next((h for h in progress.history if h["step"] == progress.stopping.best_step), {})
    log.info(
        "best validation BLEU %.2f at step %d -> %s",
        progress.stopping.best_bleu,
        progress.stopping.best_step,
        Path(cfg.run_dir) / "best.pt",
    )
    return best


def bleu(cfg: Config) -> dict[str, float]:
    """Decode the test split with the run's checkpoint and print sacreBLEU BLEU and chrF.

    Where the hypotheses go is checked before decoding, and the score is printed whatever
    happens to that file; a file that could not be saved makes the exit status 1."""
    from translate.checkpoint import load_checkpoint
    from translate.data import load_corpus
    from translate.evaluation import translate_split
    from translate.translator import Translator

    device = setup_torch(cfg)
    ckpt = checkpoint_path(cfg)
    int8 = ".int8" if cfg.decode.int8 else ""
    out = ckpt.with_name(f"{cfg.data.test_name}.{ckpt.stem}.beam{cfg.decode.beam_size}{int8}.{cfg.data.tgt_lang}")
    problem = output_problem(out)
    if problem:
        log.warning("%s: the hypotheses will not be saved; the score is printed all the same", problem)
    payload = load_checkpoint(ckpt)
    trained = payload.get("run_config", {})
    pair = (trained.get("data.src_lang"), trained.get("data.tgt_lang"))
    if None not in pair and pair != (cfg.data.src_lang, cfg.data.tgt_lang):
        log.warning(
            "%s was trained for %s-%s, not %s-%s: expect a score near 0",
            ckpt,
            *pair,
            cfg.data.src_lang,
            cfg.data.tgt_lang,
        )
    corpus = load_corpus(cfg.data)
    translator = Translator.from_payload(payload, cfg.decode, device=str(device), name=str(ckpt))
    bar = lambda lines: progress_bar(lines, total=len(corpus.test.src))  # noqa: E731
    hyps, s = translate_split(translator, corpus.test.src, corpus.test.tgt, wrap=bar)
    print(s.report(f"{cfg.data.test_name} {cfg.data.src_lang}-{cfg.data.tgt_lang}"))
    if not problem:
        try:
            out.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
            print(f"hypotheses: {out}")
            return {"bleu": s.bleu, "chrf": s.chrf}
        except OSError as err:
            problem = f"could not save the hypotheses to {out}: {err.strerror or err}"
    raise SystemExit(f"error: {problem}")


def output_problem(path: Path) -> str | None:
    """Why a file cannot be written at `path` (tried with a temporary file beside it), or None."""
    import tempfile

    if path.is_dir():
        return f"{path} is a folder"
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            return None
    except OSError as err:
        return f"{path.parent} is not writable ({err.strerror or err})"


def checkpoint_path(cfg: Config) -> Path:
    name = cfg.decode.checkpoint
    path = Path(cfg.run_dir) / f"{name}.pt" if name in ("best", "last") else Path(name)
    if not path.is_file():
        raise SystemExit(f"error: no checkpoint at {path}; train first (make train) or set decode.checkpoint=PATH")
    return path


def bench(cfg) -> dict:
    """Throughput, decoding speed, time-to-BLEU and the peer side by side (translate/benchmark.py)."""
    from hydra.core.hydra_config import HydraConfig

    from translate.benchmark import run

    setup_torch(cfg)
    return run(cfg, overrides=list(HydraConfig.get().overrides.task))


COMMANDS = {"train": train, "bleu": bleu, "bench": bench}


def hydra_main(command: str, argv: list[str]) -> None:
    """Compose the configuration with Hydra (validated against the dataclasses), then run."""
    import hydra

    register_configs()

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def _main(dcfg) -> None:
        from translate.checkpoint import CheckpointError, RunFolderError
        from translate.data import DataError
        from translate.training import TrainingError

        try:
            COMMANDS[command](to_config(dcfg))
        except (ConfigError, DataError, CheckpointError, RunFolderError, TrainingError) as err:
            log.error("%s", err)
            raise SystemExit(f"error: {err}") from None

    schema = ["schema=bench"] if command == "bench" else []
    sys.argv = [f"translate {command}", *schema, *argv, f"hydra.job.name={command}"]
    _main()


# ---- translate: text in, text out ------------------------------------------------------


def progress_bar(lines, total: int | None = None):
    """A line counter on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(lines, total=total, unit=" lines", desc="translate", disable=None, file=sys.stderr, leave=False)


def translate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="translate", description="Translate a text file line by line.")
    parser.add_argument("--model", required=True, help="checkpoint file (best.pt)")
    parser.add_argument("input", nargs="?", help="input text file (default, or -: stdin)")
    parser.add_argument("-o", "--output", help="output file (default, or -: stdout); replaced only when complete")
    parser.add_argument("--beam", type=int, default=DecodeConfig.beam_size, help="beam size; 1 = greedy")
    parser.add_argument("--batch-size", type=int, default=DecodeConfig.batch_size, help="sentences per batch, at most")
    parser.add_argument(
        "--batch-tokens",
        type=int,
        default=DecodeConfig.batch_tokens,
        help="beam rows x source subwords per batch, at most: bounds memory",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when there is one; cpu with --int8), cpu, cuda")
    parser.add_argument("--int8", action="store_true", help="decode with int8 matrix products (CPU only, faster)")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="translate and flush each line as it arrives (on by itself when stdin is a terminal)",
    )
    parser.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default="strict",
        help="invalid UTF-8 input: stop with an error (strict) or use U+FFFD (replace)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)

    from translate.checkpoint import CheckpointError
    from translate.textfile import LineError, iter_lines, write_lines, write_output
    from translate.translator import Translator, device_for

    if min(args.beam, args.batch_size, args.batch_tokens) < 1:
        parser.error("--beam, --batch-size and --batch-tokens must be at least 1")
    reading_stdin = args.input in (None, "-")
    stream = args.stream or (reading_stdin and sys.stdin.isatty())
    try:
        device = device_for("cpu" if args.int8 and args.device == "auto" else args.device)
        sizes = dict(beam_size=args.beam, batch_size=args.batch_size, batch_tokens=args.batch_tokens)
        cfg = replace(DecodeConfig(), **sizes, int8=args.int8)
        translator = Translator.from_checkpoint(args.model, cfg, device=str(device))
        src = sys.stdin.buffer if reading_stdin else open(args.input, "rb")
        with src:
            hint = "; fix the encoding or pass --errors replace"
            lines = iter_lines(src, "<stdin>" if reading_stdin else args.input, errors=args.errors, hint=hint)
            lines = translator.translate(lines, chunk_lines=1 if stream else None)
            if not stream:
                lines = progress_bar(lines)
            write_output(args.output or "-", lambda f: write_lines(f, lines, flush_each=stream))
    except KeyboardInterrupt:
        print("translate: interrupted; an -o file is left as it was", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): end quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CheckpointError, LineError, RuntimeError, OSError) as err:
        print(f"translate: error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = (
        "usage: python -m translate {train,bleu,bench} [key=value ...]\n"
        "       python -m translate translate --model PATH [INPUT] [-o OUTPUT] [--beam N] [--int8] ...\n\n"
        "  train   download the corpus, train SentencePiece and the model into run_dir\n"
        "  bleu    decode the test split with run_dir's best.pt (or decode.checkpoint=PATH); print BLEU, chrF\n"
        "  bench   throughput, decoding speed, time-to-BLEU, the peer (bench.* keys)\n"
        "  translate  a text file or stdin, one line out per line in (translate --help)\n\n"
        "key=value sets any key of the configuration; groups pick a preset: data=multi30k|text,\n"
        "model=gru|bahdanau, decode=beam|greedy, experiment=NAME, debug=tiny (conf/).\n"
        "Every key with its value: python -m translate train --cfg job"
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
