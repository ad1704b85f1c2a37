"""The scale benchmark (``make bench-scale``): memory and time as the corpus grows.

    python -m translate.scale --multi30k ../shared/data/multi30k --sizes 29000 1000000 4500000

For each size it writes a synthetic plain-text corpus into a temporary folder (each pair
joins one, two or three random Multi30k training pairs, about 24 words a side; Multi30k's
own validation and test2016 files beside it) and runs, each as its own process, as a
user would:

1. ``python -m translate prepare``: SentencePiece and the tokenized training split
   (the first run's work);
2. ``python -m translate train`` for ``--steps`` updates, the prepared files reused: the
   time from the process's start to its first update (the "step 1" log line), and the
   training target tokens/s of the log lines after the first.

Peak resident memory is each process's own (``wait4``). It also times, in this process,
what training asks of the prepared data per step: one epoch's bucketing and the reading
of a batch from the memory map. Prints a Markdown table and writes ``scale.json``
(with the machine) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from translate.benchmark import describe_machine
from translate.benchmark import machine as bench_machine

STEP_LINE = re.compile(r"step (\d+) .* ([\d.]+) tgt tok/s")


def synthesize(multi30k: Path, folder: Path, pairs: int, *, src: str = "en", tgt: str = "de", seed: int = 0) -> None:
    """A corpus of `pairs` pairs, each one to three random Multi30k training pairs joined."""
    folder.mkdir(parents=True, exist_ok=True)
    src_lines = (multi30k / f"train.{src}").read_text(encoding="utf-8").splitlines()
    tgt_lines = (multi30k / f"train.{tgt}").read_text(encoding="utf-8").splitlines()
    rng = random.Random(seed)
    with open(folder / f"train.{src}", "w", encoding="utf-8") as fs, open(folder / f"train.{tgt}", "w") as ft:
        for _ in range(pairs):
            picks = rng.choices(range(len(src_lines)), k=rng.randint(1, 3))
            fs.write(" ".join(src_lines[i] for i in picks) + "\n")
            ft.write(" ".join(tgt_lines[i].strip() for i in picks) + "\n")
    for split in ("val", "test2016"):
        for lang in (src, tgt):
            shutil.copy(multi30k / f"{split}.{lang}", folder / f"{split}.{lang}")


def run_measured(cmd: list[str], *, cwd: Path, first_line: re.Pattern | None = None) -> dict:
    """Run `cmd`; its wall time, peak resident memory, exit code, its output's last lines,
    and (with `first_line`) the seconds from its start to the first output line matching it."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    lines, first = [], None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if first is None and first_line is not None and first_line.search(line):
            first = time.perf_counter() - start
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "returncode": proc.returncode,
        "first_seconds": first,
        "lines": lines,
    }


def data_access(prepared: Path, batch_tokens: int, max_len: int = 100) -> dict:
    """Milliseconds to bucket one epoch and to read one batch from the memory map."""
    from translate.prepared import TokenizedPairs

    start = time.perf_counter()
    pairs = TokenizedPairs(prepared, max_len=max_len)
    opened = time.perf_counter() - start
    start = time.perf_counter()
    order = pairs.batches(batch_tokens=batch_tokens, generator=torch.Generator().manual_seed(0))
    bucket = time.perf_counter() - start
    chosen = order[:: max(len(order) // 300, 1)][:300]
    start = time.perf_counter()
    for index in chosen:
        pairs.batch(index)
    per_batch = (time.perf_counter() - start) / len(chosen)
    return {"open_ms": opened * 1e3, "bucket_epoch_ms": bucket * 1e3, "batch_ms": per_batch * 1e3}


def measure(size: int, args, work: Path) -> dict:
    corpus, name = work / f"corpus{size}", f"scale{size}"
    start = time.perf_counter()
    synthesize(args.multi30k, corpus, size)
    made = time.perf_counter() - start
    common = [
        "data=text", f"data.path={corpus}", f"data.name={name}", f"data.artefacts={work / 'data'}",
        f"train.batch_tokens={args.batch_tokens}", *args.set,
    ]  # fmt: skip
    python = [sys.executable, "-m", "translate"]
    prepare = run_measured([*python, "prepare", *common], cwd=work)
    if prepare["returncode"]:
        raise SystemExit(f"prepare failed for {size} pairs:\n" + "\n".join(prepare["lines"][-20:]))
    # fp32 for all sizes alike (no probe between them); a short validation at the end; embeddings 256 (the
    # default below 45 minutes, the model of the README's figures), not the no-time-limit entry of its table
    steps = args.steps
    train_args = [f"train.max_steps={steps}", f"train.log_every={args.log_every}", f"train.valid_every={steps}",
                  "train.valid_sentences=100", "train.precision=fp32", f"run_dir={work / 'runs' / name}"]  # fmt: skip
    command = [*python, "train", "model.emb_dim=256", *common, *train_args]  # a later --set model.emb_dim wins
    train = run_measured(command, cwd=work, first_line=re.compile(r"\bstep 1 "))
    if train["returncode"]:
        raise SystemExit(f"training failed for {size} pairs:\n" + "\n".join(train["lines"][-20:]))
    rates = [float(m.group(2)) for line in train["lines"] if (m := STEP_LINE.search(line)) and int(m.group(1)) > 1]
    prepared = next((work / "data" / name / "prepared").glob("en-de.*"))
    corpus_mb = sum(f.stat().st_size for f in corpus.glob("train.*")) / 2**20
    row = {
        "pairs": size,
        "corpus_mb": round(corpus_mb),
        "synthesis_s": round(made, 1),
        "prepare_s": round(prepare["seconds"], 1),
        "prepare_peak_mb": round(prepare["peak_rss_mb"]),
        "start_to_first_update_s": round(train["first_seconds"], 1),
        "train_peak_mb": round(train["peak_rss_mb"]),
        "train_tgt_tokens_per_s": round(float(np.mean(rates))) if rates else None,
        "train_windows": len(rates),
        "prepared_mb": round(sum(f.stat().st_size for f in prepared.iterdir()) / 2**20),
        **{k: round(v, 2) for k, v in data_access(prepared, args.batch_tokens).items()},
    }
    shutil.rmtree(corpus)
    return row


COLUMNS = [
    ("pairs", "pairs"),
    ("corpus_mb", "corpus MB"),
    ("prepare_s", "prepare s"),
    ("prepare_peak_mb", "prepare peak MB"),
    ("start_to_first_update_s", "2nd start to 1st update s"),
    ("train_peak_mb", "training peak MB"),
    ("train_tgt_tokens_per_s", "train tgt tok/s"),
    ("bucket_epoch_ms", "bucket an epoch ms"),
    ("batch_ms", "read a batch ms"),
]


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[key]:,}" if row[key] is not None else "-" for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m translate.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--multi30k", type=Path, default=Path("../shared/data/multi30k"), help="plain-text Multi30k")
    parser.add_argument("--sizes", type=int, nargs="+", default=[29_000, 1_000_000, 4_500_000], help="corpus sizes")
    parser.add_argument("--steps", type=int, default=150, help="training updates per size")
    parser.add_argument("--log-every", type=int, default=25, help="updates per tokens/s window")
    parser.add_argument("--batch-tokens", type=int, default=1500, help="train.batch_tokens")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides for both commands")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-scale"), help="folder for scale.json")
    parser.add_argument("--work", type=Path, default=None, help="temporary folder (default: the system's)")
    args = parser.parse_args(argv)
    args.multi30k = args.multi30k.resolve()
    if not (args.multi30k / "train.en").is_file():
        raise SystemExit(f"error: no Multi30k text at {args.multi30k} (train.en, train.de ...): pass --multi30k DIR")
    machine = bench_machine()
    print(describe_machine(machine), flush=True)
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="translate-scale-", dir=args.work) as tmp:
        for size in args.sizes:
            print(f"{size:,} pairs ...", flush=True)
            rows.append(measure(size, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
            (args.out / "scale.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    print(table(rows))
    print(f"figures: {args.out / 'scale.json'}")


if __name__ == "__main__":
    main()
