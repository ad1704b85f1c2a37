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

from translate.alignment import METHODS as ALIGNMENT_METHODS
from translate.config import (
    BY_BUDGET,
    Config,
    ConfigError,
    DecodeConfig,
    ModelConfig,
    model_for_budget,
    register_configs,
    to_config,
)
from translate.runlog import RunRecord

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


# settings a new run decides from its budget (config.BY_BUDGET): unset, a resumed run keeps its own, and the
# tables they come from are read by a new run only
UNSET_DECIDED = {f"model.{key}" for key in BY_BUDGET}
DECIDED_AT_START = tuple(f"train.{table}." for table, _ in BY_BUDGET.values())


def run_identity(cfg: Config) -> dict[str, Any]:
    """The configuration that defines a run, as plain data: decode settings, the keys a resumption
    may change, the per-budget tables and an unset dropout or embedding size left out (a resumed run
    keeps the dropout and embedding size it was built with; one set differently is refused by
    model_for_budget)."""
    flat = _flatten(asdict(cfg))
    return {
        k: v
        for k, v in flat.items()
        if k not in RESUMABLE_KEYS
        and not k.startswith(("decode.", *DECIDED_AT_START))
        and not (k in UNSET_DECIDED and v is None)
    }


def setup_torch(cfg: Config) -> torch.device:
    from translate.translator import device_for

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    return device_for(cfg.device)


def train(cfg: Config, record: RunRecord | None = None) -> dict[str, Any]:
    """Download -> SentencePiece -> train; returns the best validation metrics.

    Under torchrun (``torchrun --nproc_per_node=N -m translate train ...``) each process
    runs this with its share of the batches (translate/distributed.py). The run folder
    gets its log and configuration (`record`) only once everything has been checked."""
    from translate import distributed
    from translate.checkpoint import RunFolder
    from translate.data import DataError, describe, open_source
    from translate.learner import Learner
    from translate.model import Seq2Seq, count_parameters
    from translate.precision import Choice, choose_precision, probe_cache, step_seconds
    from translate.prepared import prepare as prepare_pairs
    from translate.schedule import expected_updates
    from translate.subword import with_bpe_dropout
    from translate.training import Interrupted, fit

    group, device = distributed.init(setup_torch(cfg))
    sync = lambda: distributed.barrier(group)  # noqa: E731
    learner = None
    try:
        with distributed.main_first(group):  # process 0 reads the corpus first (a hub dataset is cached then)
            source = open_source(cfg.data)
            # the run records what it trains on, by content: a resume on other data is refused
            identity = {**run_identity(cfg), "data_fingerprint": source.fingerprint()}
        with RunFolder.open(cfg.run_dir, identity, overwrite=cfg.overwrite, is_main=group.is_main, sync=sync) as run:
            start = f"resuming the run from step {run.resume_step}" if run.resume else "a new run"
            log.info("run folder %s: %s", cfg.run_dir, start)
            torch.manual_seed(cfg.train.seed)
            random.seed(cfg.train.seed)
            describe(source)
            valid = source.head("valid", cfg.train.valid_sentences)  # a large validation split stays bounded
            if len(valid) < source.size("valid"):
                log.info("validation during training: the first %d of %d pairs (train.valid_sentences)",
                         len(valid), source.size("valid"))  # fmt: skip
            if not len(valid):  # found now, not after the first validation's worth of updates
                raise DataError(
                    f"the validation split of {source.name} is empty: training needs it to choose best.pt "
                    "(data.valid_split / data.valid_prefix)"
                )
            with distributed.main_first(group):  # process 0 trains SentencePiece and tokenizes the corpus
                tokenizer, pairs = prepare_pairs(cfg.data, source=source, progress=group.is_main)
            pairs = with_bpe_dropout(pairs, tokenizer, cfg.train.bpe_dropout, target=cfg.train.bpe_dropout_target)
            probe = dict(batch_tokens=cfg.train.batch_tokens, cache=probe_cache(cfg.data.artefacts))

            def set_up(model_cfg: ModelConfig) -> tuple[Seq2Seq, str, Choice]:
                """The model, and the thread count and precision chosen for it (timed probes)."""
                model = Seq2Seq(model_cfg, tokenizer.vocab_size).to(device)
                threads = _threads(cfg, model, device, group.world_size, probe)
                with distributed.main_first(group):  # process 0 times the precisions (train.precision=auto)
                    precision = choose_precision(cfg.train.precision, device, model, **probe)
                return model, threads, precision

            def updates(model_cfg: ModelConfig) -> tuple[float, str]:
                """The updates this run will make with `model_cfg` (a dropout from train.dropout_by_budget
                waits on it): a training step timed in the precision chosen for it (process 0 times it)."""
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the run's draws
                    model, _, precision = set_up(model_cfg)
                    with distributed.main_first(group):
                        seconds, where = step_seconds(model, device, precision.precision, **probe)
                how = f"one {precision.precision} step takes {seconds:.2f} s, {where}"
                return expected_updates(cfg.train, seconds), how

            resumed = run.resume_model_config
            model_cfg, decided_by = model_for_budget(cfg.model, cfg.train, resumed=resumed, updates=updates)
            model, threads, precision = set_up(model_cfg)
            learner = Learner(model, cfg.train, device=device, group=group, precision=precision)
            _log_setup(
                cfg, model_cfg, decided_by, model_parameters=count_parameters(model), vocab=tokenizer.vocab_size,
                learner=learner, processes=group.world_size, threads=threads,
            )  # fmt: skip
            if record is not None and group.is_main:
                record.keep(cfg.run_dir)
            progress = fit(learner, tokenizer, pairs, valid, cfg=cfg.train, run=run, group=group)
            sync()  # all processes done before any tears the process group down (a lone exit aborted its peer)
    except Interrupted as stop:
        log.warning(
            "stopped at step %d; %s holds the state: run the same command again to resume",
            stop.step,
            Path(cfg.run_dir) / "last.pt",
        )
        raise SystemExit(130) from None
    finally:
        if learner is not None:
            learner.close()  # DDP's hold on the process group goes before the group does
        distributed.shutdown(group)
    # the last record of the best step: the end-of-run choice's, where it ran
    best = next((h for h in reversed(progress.history) if h["step"] == progress.stopping.best_step), {})
    averaged, beam = best.get("averaged_steps"), best.get("valid_beam", cfg.train.valid_beam)
    log.info(
        "best validation BLEU %.2f (%s) at step %d%s -> %s",
        progress.stopping.best_bleu,
        "greedy" if beam == 1 else f"beam {beam}",
        progress.stopping.best_step,
        f" (the mean weights of steps {', '.join(map(str, averaged))})" if averaged else "",
        Path(cfg.run_dir) / "best.pt",
    )
    return best


def _threads(cfg: Config, model, device: torch.device, processes: int, probe: dict[str, Any]) -> str:
    """Set torch's thread count for training (train.threads, else a timed choice); returns why."""
    from translate.precision import use_threads

    if device.type != "cpu":
        return "the GPU does the work"
    if processes > 1 and not cfg.train.threads:
        return f"{processes} processes share this machine: torch's default per process (OMP_NUM_THREADS)"
    return use_threads(cfg.train.threads, model, **probe)


def _log_setup(
    cfg: Config,
    m: ModelConfig,
    decided_by: dict[str, str],
    *,
    model_parameters: int,
    vocab: int,
    learner,
    processes: int,
    threads: str,
) -> None:
    """The first lines of a run: model (`m`, its dropout and embedding size decided, `decided_by` says
    how), hardware and precision, budget."""
    t = cfg.train
    log.info(
        "model: %s decoder, %s attention%s, %d parameters (embeddings %d (%s), encoder %d, decoder %d), "
        "vocabulary %d, dropout %g (%s)%s",
        m.decoder, m.attention, " and encoder self-attention" if m.encoder_self_attention else "", model_parameters,
        m.emb_size, decided_by["emb_dim"], m.enc_hidden, m.dec_hidden, vocab, m.dropout_rate, decided_by["dropout"],
        f", annotation dropout {m.annotation_dropout:g}" if m.annotation_dropout else "",
    )  # fmt: skip
    from translate.precision import device_name

    log.info(
        "device %s (%s), %d threads (%s)%s; precision %s (train.precision=%s: %s)",
        learner.device,
        device_name(learner.device),
        torch.get_num_threads(),
        threads,
        f", {processes} processes" if processes > 1 else "",
        learner.precision,
        t.precision,
        learner.precision_reason,
    )
    budget = [f"{t.max_time:g} minutes" if t.max_time else "", f"{t.max_steps} steps" if t.max_steps else ""]
    log.info(
        "budget: %s, at most %d epochs; batches of %d target tokens%s, lr %g after %d warm-up steps; "
        "validation every %d steps; early stopping: %s",
        " or ".join(b for b in budget if b) or "no time or step limit",
        t.max_epochs,
        t.batch_tokens,
        f" segmented anew with BPE-dropout {t.bpe_dropout:g}{'' if t.bpe_dropout_target else ' (source side)'}"
        if t.bpe_dropout
        else "",
        t.peak_lr,
        t.warmup,
        t.valid_every,
        f"after {t.stop_after} validations without a gain"
        if t.stop_after
        else "never" + (" (train.patience unset: the whole time budget)" if t.patience is None else ""),
    )


def bleu(cfg: Config, record: RunRecord | None = None) -> dict[str, float]:
    """Decode the test split with the run's checkpoint and print sacreBLEU BLEU and chrF.

    Where the hypotheses go is checked before decoding, and the score is printed whatever
    happens to that file; a file that could not be saved makes the exit status 1. It
    reads a run and writes nothing into it but the hypotheses file beside the checkpoint."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from translate.checkpoint import load_checkpoint
    from translate.data import load_split
    from translate.evaluation import translate_split
    from translate.precision import probe_cache
    from translate.translator import Translator

    device = setup_torch(cfg)
    ckpt = checkpoint_path(cfg)
    payload = load_checkpoint(ckpt)
    translator = Translator.from_payload(
        payload, cfg.decode, device=str(device), name=str(ckpt), probe_cache=probe_cache(cfg.data.artefacts)
    )
    kind = (".bf16" if translator.precision == "bf16" else "") + (".int8" if cfg.decode.int8 else "")
    out = ckpt.with_name(f"{cfg.data.test_name}.{ckpt.stem}.beam{cfg.decode.beam_size}{kind}.{cfg.data.tgt_lang}")
    problem = output_problem(out)
    if problem:
        log.warning("%s: the hypotheses will not be saved; the score is printed all the same", problem)
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
    test = load_split(cfg.data, "test")
    n_best, nbest_lines = cfg.decode.n_best, []
    with progress_bar(total=len(test.src), desc=cfg.data.test_name) as bar, logging_redirect_tqdm():
        if n_best > 1:  # the n-best lists are written too; the score is the first hypotheses'
            from translate.evaluation import score
            from translate.formats import result_lines

            results = list(translator.translate_results(test.src, n_best=n_best, progress=bar.update))
            hyps = [r.text for r in results]
            s = score(hyps, test.tgt)
            nbest_lines = list(result_lines(results, n_best=n_best, alignment=False))
        else:
            hyps, s = translate_split(translator, test.src, test.tgt, progress=bar.update)
    print(s.report(f"{cfg.data.test_name} {cfg.data.src_lang}-{cfg.data.tgt_lang}"))
    if not problem:
        try:
            out.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
            print(f"hypotheses: {out}")
            if nbest_lines:
                nbest = out.with_name(f"{out.name}.nbest{n_best}")
                nbest.write_text("".join(line + "\n" for line in nbest_lines), encoding="utf-8")
                print(f"{n_best}-best lists: {nbest}")
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


def prepare(cfg: Config, record: RunRecord | None = None) -> None:
    """Train SentencePiece and tokenize the training split into data/<name>/, once: the step
    `train` starts with (and skips when done). Writes no run folder."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from translate.data import describe, open_source
    from translate.prepared import prepare as prepare_pairs

    setup_torch(cfg)
    source = open_source(cfg.data)
    describe(source)
    with logging_redirect_tqdm():
        tokenizer, pairs = prepare_pairs(cfg.data, source=source)
    tokens = int(pairs.src_lengths.sum()), int(pairs.tgt_lengths.sum())
    print(f"{len(pairs)} training pairs ({tokens[0]} + {tokens[1]} subwords, vocabulary {tokenizer.vocab_size}) "
          f"in {pairs.where}")  # fmt: skip


def bench(cfg, record: RunRecord | None = None) -> dict:
    """Throughput, decoding speed, time-to-BLEU and the peer side by side (translate/benchmark.py)."""
    from hydra.core.hydra_config import HydraConfig

    from translate.benchmark import run

    setup_torch(cfg)
    if record is not None:
        record.keep(cfg.run_dir)
    return run(cfg, overrides=list(HydraConfig.get().overrides.task))


COMMANDS = {"prepare": prepare, "train": train, "bleu": bleu, "bench": bench}


def hydra_main(command: str, argv: list[str]) -> None:
    """Compose the configuration with Hydra (validated against the dataclasses), then run.

    A sweep (``-m key=a,b``) runs its jobs one after another, each in its own run folder
    (run_dir/<swept values>); a failed job is reported and the next one runs; the jobs'
    best scores are printed (and kept in run_dir/sweep.tsv) at the end."""
    import hydra
    from omegaconf import OmegaConf

    from translate.runlog import Sweep, sweep_job_name

    register_configs()
    OmegaConf.register_new_resolver("sweep_job", sweep_job_name, replace=True)
    sweep = Sweep()

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def _main(dcfg) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from translate.checkpoint import CheckpointError, RunFolderError
        from translate.data import DataError
        from translate.training import TrainingError

        hc = HydraConfig.get()
        overrides = list(hc.overrides.task)
        record = RunRecord(command, OmegaConf.to_yaml(dcfg), overrides)
        in_sweep = hc.mode == RunMode.MULTIRUN
        run_dir = os.path.relpath(hc.runtime.output_dir) if in_sweep else None
        try:
            cfg = to_config(dcfg)
            if in_sweep:
                cfg = replace(cfg, run_dir=run_dir)
                log.info("sweep job %d: %s in %s", hc.job.num, " ".join(overrides), run_dir)
            best = COMMANDS[command](cfg, record)
            if in_sweep:
                sweep.add(run_dir, overrides, best=best if isinstance(best, dict) else None)
        except (ConfigError, DataError, CheckpointError, RunFolderError, TrainingError) as err:
            record.file_only(logging.ERROR, str(err))
            if not in_sweep:
                raise SystemExit(f"error: {err}") from None
            print(f"error: sweep job {hc.job.num} ({' '.join(overrides)}): {err}", file=sys.stderr)
            sweep.add(run_dir, overrides, error=str(err))
        finally:
            record.close()

    schema = ["schema=bench"] if command == "bench" else []
    sys.argv = [f"translate {command}", *schema, *argv, *_sweep_naming(argv), f"hydra.job.name={command}"]
    try:
        _main()
    finally:
        sweep.report()
    if sweep.failed:
        raise SystemExit(1)


def _sweep_naming(argv: list[str]) -> list[str]:
    """For a sweep, name each job's folder by the swept keys alone (not the fixed ones)."""
    if not {"-m", "--multirun"} & set(argv):
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except Exception:  # Hydra reports a malformed override itself, with its own message
        return []
    fixed = {o.key_or_group for o in parsed if not o.is_sweep_override()} | {"run_dir", "overwrite"}
    return ["hydra.job.config.override_dirname.exclude_keys=[" + ",".join(f"'{k}'" for k in sorted(fixed)) + "]"]


# ---- translate: text in, text out ------------------------------------------------------


def progress_bar(total: int | None = None, desc: str = "translate", show: bool = True):
    """A line counter on stderr, shown only when stderr is a terminal; advanced per decoded batch."""
    from tqdm import tqdm

    disable = None if show else True  # None: tqdm shows the bar only on a terminal
    return tqdm(
        total=total, unit=" lines", desc=desc, disable=disable, file=sys.stderr, leave=False, dynamic_ncols=True
    )


def user_probe_cache() -> Path:
    """Where `translate --precision auto` keeps its probe's figures: one file per user and machine."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "translate" / "precision_probe.json"


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
        "--precision",
        choices=("fp32", "bf16", "auto"),
        default=DecodeConfig.precision,
        help="the matrix products in fp32, in bf16, or auto: bf16 where a timed probe finds it faster on this machine"
        " (cached in $XDG_CACHE_HOME/translate/)",
    )
    parser.add_argument(
        "--early-stop",
        action="store_true",
        help="end a sentence once a step's best candidate ends (as JoeyNMT does): faster, slightly lower BLEU",
    )
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
    parser.add_argument(
        "--n-best", type=int, default=1, metavar="N", help="N hypotheses per line: 'index ||| hypothesis ||| score'"
    )
    parser.add_argument(
        "--alignment",
        nargs="?",
        const=ALIGNMENT_METHODS[0],
        choices=ALIGNMENT_METHODS,
        help=f"after each translation, its word alignment as i-j pairs (default reading: {ALIGNMENT_METHODS[0]})",
    )
    parser.add_argument("--attention-plots", metavar="DIR", help="a heatmap of the attention per line: DIR/<line>.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)

    from tqdm.contrib.logging import logging_redirect_tqdm

    from translate.checkpoint import CheckpointError
    from translate.formats import Heatmaps, result_lines
    from translate.textfile import LineError, count_lines, iter_lines, write_lines, write_output
    from translate.translator import Translator, device_for

    if min(args.beam, args.batch_size, args.batch_tokens, args.n_best) < 1:
        parser.error("--beam, --batch-size, --batch-tokens and --n-best must be at least 1")
    if args.n_best > args.beam:
        parser.error(f"--n-best {args.n_best} needs a beam at least as wide (--beam {args.beam})")
    reading_stdin = args.input in (None, "-")
    stream = args.stream or (reading_stdin and sys.stdin.isatty())
    try:
        device = device_for("cpu" if args.int8 and args.device == "auto" else args.device)
        sizes = dict(beam_size=args.beam, batch_size=args.batch_size, batch_tokens=args.batch_tokens)
        cfg = replace(DecodeConfig(), **sizes, int8=args.int8, early_stop=args.early_stop, precision=args.precision)
        plots = Heatmaps(args.attention_plots) if args.attention_plots else None  # unwritable: before any work
        translator = Translator.from_checkpoint(args.model, cfg, device=str(device), probe_cache=user_probe_cache())
        src = sys.stdin.buffer if reading_stdin else open(args.input, "rb")
        with src:
            hint = "; fix the encoding or pass --errors replace"
            lines = iter_lines(src, "<stdin>" if reading_stdin else args.input, errors=args.errors, hint=hint)
            total = None if reading_stdin else count_lines(args.input)
            with progress_bar(total=total, show=not stream) as bar, logging_redirect_tqdm():
                chunk = dict(chunk_lines=1 if stream else None, progress=bar.update)
                if args.n_best > 1 or args.alignment or plots:
                    results = translator.translate_results(lines, n_best=args.n_best, alignment=args.alignment
                                                           or ALIGNMENT_METHODS[0], **chunk)  # fmt: skip
                    lines = result_lines(plots(results) if plots else results, n_best=args.n_best,
                                         alignment=bool(args.alignment))  # fmt: skip
                else:
                    lines = translator.translate_lines(lines, **chunk)
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
        "usage: python -m translate {prepare,train,bleu,bench} [key=value ...]\n"
        "       python -m translate translate --model PATH [INPUT] [-o OUTPUT] [--beam N] [--int8] ...\n\n"
        "  prepare download the corpus, train SentencePiece, tokenize the training split once (data/<name>/)\n"
        "  train   prepare when needed, then train the model into run_dir\n"
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
