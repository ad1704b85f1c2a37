"""The benchmark behind `make bench`: every figure is measured by running code.

1. Training throughput per decoder variant: real target tokens per second in steady
   state (warm-up steps excluded), the padding fraction of the batches, peak memory, and
   the fraction of the machine's own matrix-product peak that this is (tokens/s x FLOP per
   target token, counted by torch's FlopCounterMode, / the best 2048 x 2048 product in the
   chosen precision).
   Each variant runs in its own process, so peak memory is its own.
2. Decoding test2016: sentences per second, greedy and beam 5, for the fp32 model,
   (bench.int8, the default) the int8 CPU model of translate/quantize.py, and bf16 where
   decode.precision=auto takes it on this machine (its probe's choice is recorded), measured
   steady-state (model loaded and warmed up, decoding only) and as a whole `translate`
   process, with the sacreBLEU score of each.
3. Time-to-BLEU (skipped with bench.quick=true): test2016 BLEU after a wall-clock
   training budget at the defaults `train` picks for it, for each SRC-TGT:MINUTES run in
   bench.time_to_bleu (by default en-de and de-en for 35 minutes, en-de for 60), with the
   updates it reached and its best validation BLEU.
4. The peer (bench.peer=joeynmt): JoeyNMT's throughput and decoding speed at the same
   model size, set up and measured by the scripts in bench.peer_kit, and our/their ratios.

Figures go to stdout as a table and to <run_dir>/bench.json; below the table, the headline
figures stand against the project's goals (GOALS), each marked met or missed.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import platform
import re
import resource
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from translate.config import BenchRunConfig, ModelConfig, model_for_budget, time_to_bleu_run
from translate.data import Split, load_split
from translate.schedule import lr_at

log = logging.getLogger(__name__)


def bench_model(cfg: BenchRunConfig) -> ModelConfig:
    """The model the throughput figures time: the one the time-to-BLEU runs train, its dropout and
    embedding size decided for bench.budget_minutes as the train command decides them, except that a
    dropout table by updates gives its entry of the most updates (nothing is timed here: a dropout
    rate changes a step's time by a few per cent at most)."""
    return model_for_budget(cfg.model, replace(cfg.train, max_time=cfg.bench.budget_minutes))[0]


def _throughput_worker(cfg: BenchRunConfig, variant: str, queue) -> None:
    from translate.learner import Learner
    from translate.model import Seq2Seq
    from translate.precision import probe_cache, use_threads
    from translate.prepared import prepare

    torch.manual_seed(cfg.train.seed)
    tokenizer, examples = prepare(cfg.data, progress=False)
    model = Seq2Seq(replace(bench_model(cfg), decoder=variant), tokenizer.vocab_size)
    use_threads(cfg.train.threads, model, batch_tokens=cfg.train.batch_tokens, cache=probe_cache(cfg.data.artefacts))
    learner = Learner(model, cfg.train, device=torch.device("cpu"))
    lr = lr_at(cfg.train, cfg.train.warmup + 1, 0.1)  # a mid-run learning rate
    before = _peaks(learner.precision)
    real = slots = steps = 0
    start, measured = None, []
    for n, index in enumerate(
        examples.batches(batch_tokens=cfg.train.batch_tokens, generator=torch.Generator().manual_seed(0))
    ):
        batch = examples.batch(index)
        if n == cfg.bench.warmup_steps:
            start = time.perf_counter()
        learner.step(batch, lr)
        if start is not None:
            real += batch.ntokens
            slots += batch.tgt_out.numel()
            steps += 1
            measured.append(index)
            if time.perf_counter() - start >= cfg.bench.throughput_seconds:
                break
    seconds = time.perf_counter() - start
    # the share of the machine's own matrix-product speed that training reaches
    flops = flop_per_token(learner, [examples.batch(i) for i in measured[:: max(len(measured) // 8, 1)][:8]])
    after = _peaks(learner.precision)
    peak, fp32_peak = max(before[0], after[0]), max(before[1], after[1])
    queue.put(
        {
            "train_flop_per_tgt_token": flops,
            "matmul_peak_gflops": peak / 1e9,  # of the precision training ran in: the higher reading
            "matmul_peak_gflops_before": before[0] / 1e9,
            "matmul_peak_gflops_after": after[0] / 1e9,
            "train_fraction_of_peak": real / seconds * flops / peak,
            "train_fraction_of_fp32_peak": real / seconds * flops / fp32_peak,
            "train_tgt_tokens_per_s": real / seconds,
            "train_steps_per_s": steps / seconds,
            "train_padding_fraction": 1 - real / slots,
            "train_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "train_measured_steps": steps,
            "train_precision": learner.precision,
        }
    )


def _peaks(precision: str) -> tuple[float, float]:
    """The matrix-product peaks (FLOP/s) of `precision` and of fp32, measured now. The throughput
    worker reads them before and after its timed window and keeps the higher: a shared host's
    speed drifts (the same 2048^2 product gave 217 and 330 GFLOP/s within minutes on the Intel
    Xeon without AVX512-BF16), and one reading in a slow moment would flatter the share of the peak."""
    peak = matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32)
    return peak, peak if precision == "fp32" else matmul_peak(torch.float32)


def flop_per_token(learner, batches: list) -> float:
    """Floating-point operations of a training step (forward and backward) per real target
    token, as torch's FlopCounterMode counts them on real batches: every matrix product,
    the GRUs' included. The weights are left alone (the gradients are dropped)."""
    from torch.utils.flop_counter import FlopCounterMode

    flops = tokens = 0
    for batch in batches:
        with FlopCounterMode(display=False) as counter:
            learner.backward(batch)
        learner.skip()
        flops, tokens = flops + counter.get_total_flops(), tokens + batch.ntokens
    return flops / max(tokens, 1)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """This machine's measured matrix-product speed in FLOP/s: the best of `repeats`
    n x n products in `dtype`, on the threads torch uses."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def training_throughput(cfg: BenchRunConfig, variant: str) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_throughput_worker, args=(cfg, variant, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def decoding(
    cfg: BenchRunConfig, test: Split, checkpoint: Path, beam: int, int8: bool = False, precision: str = "fp32"
) -> dict[str, float]:
    """Steady-state and whole-process decoding speed of the test split, and its BLEU."""
    from translate.evaluation import score
    from translate.translator import Translator

    decode = replace(cfg.decode, beam_size=beam, int8=int8, precision=precision)
    translator = Translator.from_checkpoint(str(checkpoint), decode, device="cpu")
    list(translator.translate_lines(test.src[:64]))  # warm-up
    start = time.perf_counter()
    hyps = list(translator.translate_lines(test.src))
    steady = time.perf_counter() - start  # decoding alone: scoring 1000 lines takes about 1 s
    bleu = score(hyps, test.tgt)

    work = Path(cfg.run_dir)
    src_file = work / f"bench.{cfg.data.test_name}.{cfg.data.src_lang}"
    src_file.write_text("".join(s + "\n" for s in test.src), encoding="utf-8")
    kind = ("" if precision == "fp32" else f".{precision}") + (".int8" if int8 else "")
    out_file = work / f"bench.{cfg.data.test_name}.beam{beam}{kind}.{cfg.data.tgt_lang}"
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "translate",
            "translate",
            "--model",
            str(checkpoint),
            "--beam",
            str(beam),
            "--batch-size",
            str(decode.batch_size),
            str(src_file),
            "-o",
            str(out_file),
            *(["--int8"] if int8 else []),
            *(["--precision", precision] if precision != "fp32" else []),
        ],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    whole = time.perf_counter() - start
    same = out_file.read_text(encoding="utf-8").splitlines() == hyps
    tokens = target_tokens(translator.tokenizer, hyps)
    return {
        "sents_per_s": len(hyps) / steady,
        "process_sents_per_s": len(hyps) / whole,
        "tgt_tokens_per_s": tokens / steady,
        "process_tgt_tokens_per_s": tokens / whole,
        "tgt_tokens_per_sent": tokens / max(len(hyps), 1),
        "bleu": bleu.bleu,
        "chrf": bleu.chrf,
        "process_output_identical": same,
    }


def target_tokens(tokenizer, lines: list[str]) -> int:
    """Subword tokens in `lines` (output text), counted with one SentencePiece model for
    every system, so that a decoder whose outputs are short cannot look fast."""
    return sum(len(ids) for ids in tokenizer.encode(lines))


def model_minutes(checkpoint: Path) -> float | None:
    """Minutes of training behind a translate model file: the whole run's, where the end-of-run
    choice recorded them (a best single checkpoint from minute 33 of a 35-minute run is the
    product of all 35), else the clock of its validation."""
    from translate.checkpoint import load_checkpoint

    payload = load_checkpoint(checkpoint)
    minutes = payload.get("run_minutes", payload.get("metrics", {}).get("elapsed_min"))
    return float(minutes) if minutes is not None else None


def time_to_bleu(cfg: BenchRunConfig, src: str, tgt: str, minutes: float, own: list[str]) -> dict[str, Any]:
    """Train for `minutes` (a fresh run at the defaults for that budget), then beam-5 BLEU on
    the test split; with the updates the run reached and its best validation BLEU."""
    from translate.checkpoint import load_checkpoint

    run_dir = time_to_bleu_dir(cfg, src, tgt, minutes)
    args = [
        *own,
        f"data.src_lang={src}",
        f"data.tgt_lang={tgt}",
        f"train.max_time={minutes}",
        f"run_dir={run_dir}",
        "overwrite=true",
        "train.max_steps=null",
    ]
    start = time.perf_counter()
    train_subprocess(cfg, args)
    wall = (time.perf_counter() - start) / 60
    direction = replace(cfg, data=replace(cfg.data, src_lang=src, tgt_lang=tgt), run_dir=str(run_dir))
    result = decoding(direction, load_split(direction.data, "test"), run_dir / "best.pt", beam=5)
    best = load_checkpoint(run_dir / "best.pt")
    return {
        "bleu": result["bleu"],
        "chrf": result["chrf"],
        "updates": load_checkpoint(run_dir / "last.pt")["step"],
        "best_valid_bleu": best.get("metrics", {}).get("valid_bleu"),
        "best_valid_beam": best.get("metrics", {}).get("valid_beam", 1),  # 5 from the end-of-run choice
        "best_valid_step": best["step"],
        "wall_minutes": wall,
        "checkpoint": str(run_dir / "best.pt"),
    }


def time_to_bleu_dir(cfg: BenchRunConfig, src: str, tgt: str, minutes: float) -> Path:
    """Where a time-to-BLEU run trains: <run_dir>/ttb<MINUTES>.<SRC>-<TGT>."""
    return Path(cfg.run_dir) / f"ttb{minutes:g}.{src}-{tgt}"


def training_overrides(overrides: list[str]) -> list[str]:
    """The command line's overrides that a training run started by the benchmark takes: all but
    the benchmark's own (bench.*, schema) and those it sets itself (run_dir, data.path)."""
    return [o for o in overrides if not o.lstrip("+~").startswith(("bench.", "run_dir=", "schema=", "data.path="))]


def train_subprocess(cfg: BenchRunConfig, overrides: list[str]) -> None:
    """`python -m translate train` on the benchmark's corpus, as a user runs it."""
    data = [f"data.path={cfg.data.path}"] if cfg.data.path else []
    subprocess.run([sys.executable, "-m", "translate", "train", *data, *overrides], check=True)


def peer_joeynmt(cfg: BenchRunConfig, minutes: float, tokenizer) -> dict[str, Any]:
    """JoeyNMT measured by the peer kit's own scripts (their setup, their config).

    The peer decodes a model of its own trained for `minutes` of wall clock, as long as the
    model we decode: trained now in full mode (its training throughput is measured on the
    way), else taken from the cache of earlier benchmark runs (peer_model), so quick mode
    compares models of equal training time without training the peer for as long each time.
    Its outputs are counted in target tokens with `tokenizer` (our model's)."""
    kit = Path(cfg.bench.peer_kit)
    if not (kit / "setup.sh").is_file():
        raise FileNotFoundError(f"no peer kit at {kit} (bench.peer_kit)")
    env = {**os.environ, "DATA": str(Path(cfg.data.path or "../shared/data/multi30k").resolve())}
    setup = subprocess.run(["bash", str(kit / "setup.sh")], check=True, env=env, capture_output=True, text=True)
    work = Path(re.findall(r"work: (\S+)", setup.stdout)[0])
    out: dict[str, Any] = {}
    checkpoint, record, trained_now = peer_model(cfg, kit, env, minutes, train=not cfg.bench.quick)
    if trained_now and record.get("train_tgt_tokens_per_s"):  # measured in this run, by the same statistic
        out["peer_train_tgt_tokens_per_s"] = record["train_tgt_tokens_per_s"]
    elif cfg.bench.quick:  # a reused model: its throughput is another sitting's, so probe it now
        env["BUDGET_S"] = str(cfg.bench.peer_train_seconds)
        probe = subprocess.run(
            ["bash", str(kit / "run_throughput.sh")], check=True, env=env, capture_output=True, text=True
        ).stdout
        out["peer_train_tgt_tokens_per_s"] = float(re.findall(r"joeynmt_train_tgt_tok_per_s ([\d.]+)", probe)[-1])
    out["peer_decode_model"] = str(checkpoint)
    out["peer_decode_model_minutes"] = record["minutes"]
    out["peer_decode_model_trained"] = record["trained"]
    env["CKPT"] = str(checkpoint)
    decode = subprocess.run(
        ["bash", str(kit / "run_decode.sh")], check=True, env=env, capture_output=True, text=True
    ).stdout
    pattern = r"== beam (\d+): (\d+) hyps; generation [\d.]+s = ([\d.]+) sents/s; whole process (\S+)"
    for beam, n, rate, wall in re.findall(pattern, decode):
        name = "greedy" if beam == "1" else f"beam{beam}"
        out[f"peer_decode_{name}_sents_per_s"] = float(rate)
        out[f"peer_decode_{name}_process_sents_per_s"] = int(n) / clock_seconds(wall)
        written = sorted((work / "decode").glob(f"test2016.beam{beam}.*"), key=lambda p: p.stat().st_mtime)
        hyps = written[-1].read_text(encoding="utf-8").splitlines()
        per_sent = target_tokens(tokenizer, hyps) / max(len(hyps), 1)
        out[f"peer_decode_{name}_tgt_tokens_per_sent"] = per_sent
        for unit in ("", "process_"):
            out[f"peer_decode_{name}_{unit}tgt_tokens_per_s"] = per_sent * out[f"peer_decode_{name}_{unit}sents_per_s"]
    bleus = re.findall(r"BLEU: ([\d.]+)", decode)
    if len(bleus) >= 2:
        out["peer_bleu_test2016_greedy"], out["peer_bleu_test2016_beam5"] = float(bleus[0]), float(bleus[1])
    return out


def peer_model(cfg: BenchRunConfig, kit: Path, env: dict, minutes: float, *, train: bool) -> tuple[Path, dict, bool]:
    """The peer's model trained for `minutes` (rounded to whole minutes), its record, and
    whether it was trained now.

    Kept in <data.artefacts>/<data.name>/peer/joeynmt.<N>min/ with peer.json, so later
    benchmark runs on the same machine reuse it (another machine trains its own: N minutes
    there buy other updates); `train` (full mode) trains it again, in the same sitting as
    our figures. Without a validation in its budget JoeyNMT keeps only the checkpoint it
    saves when stopped: that one is used."""
    whole = max(1, round(minutes))
    folder = Path(cfg.data.artefacts) / cfg.data.name / "peer" / f"joeynmt.{whole}min"
    record_file = folder / "peer.json"
    here = describe_machine(machine())
    if not train and record_file.is_file():
        record = json.loads(record_file.read_text(encoding="utf-8"))
        found = _peer_checkpoint(folder)
        if found is not None and record.get("machine") == here:
            log.info("peer: decoding its %d-minute model trained %s (%s)", whole, record["trained"], folder)
            return found, record, False
        if found is not None:  # as long as ours on another machine is another yardstick (updates, quality, speed)
            other = str(record.get("machine")).removeprefix("machine: ")
            log.info("peer: its %d-minute model in %s was trained on another machine (%s)", whole, folder, other)
    log.info("peer: training its model for %d minutes, as long as ours (kept in %s for later runs)", whole, folder)
    record_file.unlink(missing_ok=True)  # a model without its record is never reused
    folder.mkdir(parents=True, exist_ok=True)
    run_env = {**env, "BUDGET_S": str(whole * 60), "RUN_DIR": str(folder.resolve())}
    trained = subprocess.run(
        ["bash", str(kit / "run_train.sh")], check=True, env=run_env, capture_output=True, text=True
    )
    steady = re.findall(r"steady state: median (\d+) tgt tok/s", trained.stdout)
    found = _peer_checkpoint(folder)
    if found is None:
        raise RuntimeError(f"the peer's training left no checkpoint in {folder / 'model'}")
    record = {
        "minutes": whole,
        "trained": time.strftime("%Y-%m-%d %H:%M"),
        "machine": here,
        "train_tgt_tokens_per_s": float(steady[-1]) if steady else None,
    }
    record_file.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return found, record, True


def _peer_checkpoint(folder: Path) -> Path | None:
    """best.ckpt, else the last checkpoint JoeyNMT wrote (the one saved when it was stopped)."""
    model = folder / "model"
    if (model / "best.ckpt").is_file():
        return model / "best.ckpt"
    ckpts = sorted(model.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if model.is_dir() else []
    return ckpts[-1] if ckpts else None


def clock_seconds(text: str) -> float:
    """Seconds of GNU time's wall clock, h:mm:ss or m:ss.ss."""
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def run(cfg: BenchRunConfig, overrides: list[str] = ()) -> dict[str, Any]:
    """Measure everything the bench settings ask for, phase by phase; bench.json is
    rewritten after each, so a late failure keeps the earlier figures. `overrides` (the
    command line's) go on to the training runs it starts (time-to-BLEU, quick mode's model):
    the defaults, unless the command line sets something else."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {"batch_tokens": cfg.train.batch_tokens, "precision": cfg.train.precision, "quick": cfg.bench.quick}
    fig: dict[str, Any] = {"machine": machine(), "config": {"model": asdict(bench_model(cfg)), **settings}}
    own = training_overrides(overrides)
    phases = [throughput_figures, time_to_bleu_figures, decoding_figures, peer_figures]
    for phase in phases:
        phase(cfg, fig, own)
        save(fig, run_dir)
    print(describe_machine(fig["machine"]))
    print(table(fig))
    print(headline(fig, [time_to_bleu_run(entry) for entry in cfg.bench.time_to_bleu]))
    print(f"figures: {run_dir / 'bench.json'}")
    return fig


def machine() -> dict[str, Any]:
    """The machine every figure of a run was measured on: CPU model and the ISA extensions
    that decide fp32 / bf16 / int8 speed, cores and threads, torch, and the GPU if any."""
    from translate.precision import cpu_features, cpu_name

    return {
        "cpu": cpu_name() or platform.processor() or platform.machine(),
        "cpu_features": cpu_features(),
        "cores": len(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_fast": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def describe_machine(m: dict[str, Any]) -> str:
    """One line naming the machine, printed above every table of figures."""
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    features = " ".join(m["cpu_features"]) or "no AVX2"
    return f"machine: {m['cpu']} ({features}), {m['cores']} cores, torch {m['torch']}{gpu}"


def throughput_figures(cfg: BenchRunConfig, fig: dict[str, Any], own: list[str]) -> None:
    for variant in cfg.bench.variants:
        log.info("training throughput: %s decoder, %.0f s", variant, cfg.bench.throughput_seconds)
        for key, value in training_throughput(cfg, variant).items():
            fig[f"{key}_{variant}"] = value
    # the headline figures: the configured decoder's
    for key in ("train_tgt_tokens_per_s", "train_fraction_of_peak", "train_fraction_of_fp32_peak"):
        if f"{key}_{cfg.model.decoder}" in fig:
            fig[key] = fig[f"{key}_{cfg.model.decoder}"]


def time_to_bleu_figures(cfg: BenchRunConfig, fig: dict[str, Any], own: list[str]) -> None:
    """ttb_<src>_<tgt>_<minutes>min_<figure> for each bench.time_to_bleu run (e.g.
    ttb_en_de_60min_bleu), each saved as soon as it is measured."""
    if cfg.bench.quick:
        return
    for entry in cfg.bench.time_to_bleu:
        src, tgt, minutes = time_to_bleu_run(entry)  # checked by BenchConfig
        log.info("time-to-BLEU %s-%s: %g minutes of training", src, tgt, minutes)
        for key, value in time_to_bleu(cfg, src, tgt, minutes, own).items():
            fig[ttb_key(src, tgt, minutes, key)] = value
        save(fig, Path(cfg.run_dir))


def ttb_key(src: str, tgt: str, minutes: float, figure: str) -> str:
    """The name of a time-to-BLEU run's figure in bench.json: ttb_en_de_60min_bleu."""
    return f"ttb_{src}_{tgt}_{minutes:g}min_{figure}"


def decoding_checkpoint(cfg: BenchRunConfig, own: list[str]) -> Path:
    """bench.checkpoint, else the model of the first time-to-BLEU run in the configured direction
    (en-de, 35 minutes, by default), else run_dir/best.pt, else one trained now."""
    b = cfg.bench
    if b.checkpoint:
        return Path(b.checkpoint)
    runs = [] if b.quick else [time_to_bleu_run(entry) for entry in b.time_to_bleu]
    ours = [time_to_bleu_dir(cfg, *run) for run in runs if run[:2] == (cfg.data.src_lang, cfg.data.tgt_lang)]
    checkpoint = ours[0] / "best.pt" if ours else Path(cfg.run_dir) / "best.pt"
    if checkpoint.is_file():
        return checkpoint
    log.info("no checkpoint for the decoding figures: training one for %.0f minutes", b.quick_train_minutes)
    quick_dir = Path(cfg.run_dir) / "quick"
    budget = [f"train.max_time={b.quick_train_minutes}", "train.max_steps=null"]
    train_subprocess(cfg, [*own, f"run_dir={quick_dir}", "overwrite=true", *budget])
    return quick_dir / "best.pt"


def decoding_figures(cfg: BenchRunConfig, fig: dict[str, Any], own: list[str]) -> None:
    checkpoint = decoding_checkpoint(cfg, own)
    fig["decode_checkpoint"] = str(checkpoint)
    fig["decode_model_minutes"] = model_minutes(checkpoint)
    test = load_split(cfg.data, "test")
    kinds = [("greedy", 1, False, "fp32"), ("beam5", 5, False, "fp32")]
    if cfg.bench.int8:
        kinds += [("greedy_int8", 1, True, "fp32"), ("beam5_int8", 5, True, "fp32")]
    fig["decode_precision_auto"], fig["decode_precision_auto_reason"] = decode_precision_choice(cfg, checkpoint)
    if fig["decode_precision_auto"] == "bf16":  # bf16 is measured where decode.precision=auto would take it
        kinds += [("greedy_bf16", 1, False, "bf16"), ("beam5_bf16", 5, False, "bf16")]
    for name, beam, int8, precision in kinds:
        log.info("decoding %s with %s", cfg.data.test_name, name)
        r = decoding(cfg, test, checkpoint, beam, int8, precision)
        for key in ("sents_per_s", "process_sents_per_s", "tgt_tokens_per_s", "process_tgt_tokens_per_s"):
            fig[f"decode_{name}_{key}"] = r[key]
        fig[f"decode_{name}_tgt_tokens_per_sent"] = r["tgt_tokens_per_sent"]
        fig[f"decode_{name}_bleu"] = r["bleu"]
        fig[f"decode_{name}_process_output_identical"] = r["process_output_identical"]
    for name in ("greedy", "beam5"):
        fp32 = f"decode_{name}_"
        for other in (f"decode_{name}_int8_", f"decode_{name}_bf16_"):
            if f"{other}bleu" in fig:
                fig[f"{other}bleu_delta"] = fig[f"{other}bleu"] - fig[f"{fp32}bleu"]
                fig[f"{other}speedup"] = fig[f"{other}sents_per_s"] / fig[f"{fp32}sents_per_s"]


def decode_precision_choice(cfg: BenchRunConfig, checkpoint: Path) -> tuple[str, str]:
    """What decode.precision=auto chooses for beam 5 on this machine, and why (the probe,
    cached with training's)."""
    from translate.precision import probe_cache
    from translate.translator import Translator

    decode = replace(cfg.decode, beam_size=5, int8=False, precision="auto")
    t = Translator.from_checkpoint(str(checkpoint), decode, device="cpu", probe_cache=probe_cache(cfg.data.artefacts))
    return t.precision, t.precision_reason


# (our figure, the peer's figure) pairs whose ratio the benchmark reports; the peer decodes
# in fp32 only, so our int8 and bf16 figures are set against its fp32 ones
RATIOS = (("train_tgt_tokens_per_s", "train_tgt_tokens_per_s"),) + tuple(
    (f"decode_{kind}{variant}_{unit}", f"decode_{kind}_{unit}")
    for kind in ("greedy", "beam5")
    for variant in ("", "_int8", "_bf16")
    for unit in ("sents_per_s", "process_sents_per_s", "tgt_tokens_per_s", "process_tgt_tokens_per_s")
)


def peer_figures(cfg: BenchRunConfig, fig: dict[str, Any], own: list[str]) -> None:
    if not cfg.bench.peer:  # BenchConfig allows joeynmt only
        return
    log.info("peer: JoeyNMT via %s", cfg.bench.peer_kit)
    minutes = fig.get("decode_model_minutes") or cfg.bench.budget_minutes
    fig.update(peer_joeynmt(cfg, minutes, checkpoint_tokenizer(Path(fig["decode_checkpoint"]))))
    for ours, theirs in RATIOS:
        if ours in fig and f"peer_{theirs}" in fig:
            fig[f"ratio_{ours}"] = fig[ours] / fig[f"peer_{theirs}"]


def checkpoint_tokenizer(checkpoint: Path):
    from translate.checkpoint import load_checkpoint, tokenizer_bytes
    from translate.tokenizer import Tokenizer

    return Tokenizer(tokenizer_bytes(load_checkpoint(checkpoint)))


def save(fig: dict[str, Any], run_dir: Path) -> None:
    """Write the figures so far: a later phase that fails leaves the earlier ones on disk."""
    (run_dir / "bench.json").write_text(json.dumps(fig, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# The project's goals for the benchmark's headline figures (the README's "Results"):
# (what, figure key, goal, unit); a goal of None shows the figure without one.
GOALS: tuple[tuple[str, str, float | None, str], ...] = (
    ("training tokens/s, ours / peer", "ratio_train_tgt_tokens_per_s", 4.0, "x"),
    ("training, share of the chosen precision's peak", "train_fraction_of_peak", 0.60, "%"),
    ("training, share of the fp32 peak", "train_fraction_of_fp32_peak", None, "%"),
    ("beam 5 fp32, whole process, sentences/s, ours / peer", "ratio_decode_beam5_process_sents_per_s", 20.0, "x"),
    ("the same in target tokens/s", "ratio_decode_beam5_process_tgt_tokens_per_s", 20.0, "x"),
    ("beam 5 int8, whole process, sentences/s, ours / peer", "ratio_decode_beam5_int8_process_sents_per_s", 25.0, "x"),
    ("the same in target tokens/s", "ratio_decode_beam5_int8_process_tgt_tokens_per_s", 25.0, "x"),
    ("beam 5 bf16, whole process, sentences/s, ours / peer", "ratio_decode_beam5_bf16_process_sents_per_s", None, "x"),
)
# test-split BLEU after a time-to-BLEU run of (src, tgt, minutes)
TIME_TO_BLEU_GOALS = {("en", "de", 35.0): 37.5, ("de", "en", 35.0): 41.0, ("en", "de", 60.0): 39.5}


def headline(fig: dict[str, Any], runs: list[tuple[str, str, float]] = ()) -> str:
    """The figures the project sets goals for, each against its goal: met or missed (only
    those this run measured); `runs` are the time-to-BLEU runs, (src, tgt, minutes)."""
    rows = ["| headline | value | goal | |", "|---|---:|---:|---|"]

    def shown(value: float, unit: str) -> str:
        return {"x": f"{value:.2f}×", "%": f"{100 * value:.1f}%", "": f"{value:.2f}"}[unit]

    def row(what: str, value: float, goal: float | None, unit: str, note: str = "") -> None:
        if goal is None:
            rows.append(f"| {what} | {shown(value, unit)}{note} | | |")
        else:
            verdict = "met" if value >= goal else "**missed**"
            rows.append(f"| {what} | {shown(value, unit)}{note} | ≥ {shown(goal, unit)} | {verdict} |")

    for what, key, goal, unit in GOALS:
        if isinstance(fig.get(key), (int, float)):
            row(what, fig[key], goal, unit)
    for src, tgt, minutes in runs:
        bleu, updates = fig.get(ttb_key(src, tgt, minutes, "bleu")), fig.get(ttb_key(src, tgt, minutes, "updates"))
        if isinstance(bleu, (int, float)):
            note = f" ({updates} updates)" if updates is not None else ""
            goal = TIME_TO_BLEU_GOALS.get((src, tgt, minutes))
            row(f"time-to-BLEU {src}→{tgt}, {minutes:g} minutes: test BLEU, beam 5", bleu, goal, "", note)
    return "\n".join(rows)


def table(fig: dict[str, Any]) -> str:
    rows = ["| figure | value |", "|---|---|"]
    for key, value in sorted(fig.items()):
        if isinstance(value, float):
            rows.append(f"| {key} | {value:.3f} |" if abs(value) < 10 else f"| {key} | {value:.1f} |")
        elif isinstance(value, (int, bool, str)):
            rows.append(f"| {key} | {value} |")
    return "\n".join(rows)
