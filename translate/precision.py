"""Precision: fp32, or bf16 where it is faster *on this machine*, for training and decoding.

``train.precision=auto`` does not trust a capability flag ("the CPU supports bf16" is
not "bf16 is faster here": on an Intel Xeon with AVX512-BF16, bf16 autocast trained
slower than fp32). Where bf16 is available at all, a short timed probe runs the model's
own training step (forward, backward and update on a synthetic batch of
``train.batch_tokens``, on a copy of the model, the random state put back afterwards) in
both precisions, and bf16 is chosen only if it is clearly faster. The figures are cached
per machine, model shape and batch size (``<data.artefacts>/precision_probe.json``), so
the probe runs once; the choice and its reason open every training log.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from translate.config import PRECISIONS, ConfigError

log = logging.getLogger(__name__)

BF16_MARGIN = 0.9  # bf16 must take at most this fraction of fp32's step time to be chosen
_MEMO: dict[str, dict[str, float]] = {}  # probe figures of this process, when there is no cache file


@dataclass
class Choice:
    precision: str  # fp32 | bf16
    reason: str


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def choose_precision(
    requested: str,
    device: torch.device,
    model: torch.nn.Module | None = None,
    *,
    batch_tokens: int = 1500,
    cache: Path | None = None,
    measure: Callable[..., dict[str, float]] | None = None,
    supported: bool | None = None,
) -> Choice:
    """The precision to train in, and why. `measure` (the timed probe by default) and
    `supported` (the hardware check by default) are there to be replaced in tests."""
    return _choose(
        "train.precision", requested, device, model, supported=supported, cache=cache,
        work=f"a {batch_tokens}-token training step", key_work=f"{batch_tokens} tokens",
        measure=lambda: (measure or probe)(model, device, batch_tokens),
    )  # fmt: skip


def _choose(
    setting: str,
    requested: str,
    device: torch.device,
    model: torch.nn.Module | None,
    *,
    supported: bool | None,
    cache: Path | None,
    work: str,
    key_work: str,
    measure: Callable[[], dict[str, float]],
) -> Choice:
    """fp32 or bf16 for `setting` (train.precision, decode.precision): as asked, or for auto,
    bf16 where the hardware has it and the probe (`measure`, timing `work`; its figures
    cached under `key_work`) finds it at most BF16_MARGIN of fp32's time."""
    if requested not in PRECISIONS:
        raise ConfigError(f"{setting}={requested!r} is not allowed: choose one of {', '.join(PRECISIONS)}")
    supported = bf16_supported(device) if supported is None else supported
    if requested != "auto":
        if requested == "bf16" and not supported:
            log.warning("%s=bf16 but this %s has no bf16 arithmetic; expect it to be slow", setting, device.type)
        return Choice(requested, "asked for")
    if not supported:
        return Choice("fp32", f"this {device.type} has no bf16 arithmetic")
    if model is None:
        return Choice("fp32", "no model to time bf16 with")
    figures, where = _figures(cache, probe_key(model, device, key_work), measure)
    fp32, bf16 = figures["fp32"], figures["bf16"]
    precision = "bf16" if bf16 <= BF16_MARGIN * fp32 else "fp32"
    why = f"timed probe: {work} takes {fp32 * 1000:.0f} ms in fp32, {bf16 * 1000:.0f} ms in bf16 ({where})"
    return Choice(precision, why)


def flush_subnormals() -> None:
    """Training arithmetic, for the learner and the probes that time its step alike: floats
    below 1.2e-38 (subnormals) as zero. The gates' small gradients produce them, and fp32
    steps then slowed down by up to half at times (README, "The training GRU")."""
    torch.set_flush_denormal(True)


def _best_time(run: Callable[[], object], reps: int, device: torch.device) -> float:
    """Seconds `run` takes, the best of `reps` after one warm-up call."""
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def probe(
    model: torch.nn.Module,
    device: torch.device,
    batch_tokens: int,
    reps: int = 3,
    precisions: tuple[str, ...] = ("fp32", "bf16"),
) -> dict[str, float]:
    """Seconds per training step (forward with dropout, backward, clipping, an Adam update;
    the best of `reps` after one warm-up) of a copy of `model` on a synthetic batch, in fp32
    and under bf16 autocast (`precisions`). The random state is put back: training draws what
    it would have."""
    from translate.batching import make_batch

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _probe(model, device, batch_tokens, reps, make_batch, precisions)


def _probe(model, device, batch_tokens, reps, make_batch, precisions) -> dict[str, float]:
    net = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-9)
    length = 16
    g = torch.Generator().manual_seed(0)
    flush_subnormals()  # as the learner trains
    rows = max(1, batch_tokens // length)
    ids = torch.randint(4, model.vocab_size, (2, rows, length - 1), generator=g).tolist()
    batch = make_batch(ids[0], ids[1]).to(device)

    def step(precision: str) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(precision, device):
            features = net.features(batch)
        loss, _ = net.loss(batch, label_smoothing=0.1, features=features, products=product_dtype(precision))
        (loss / batch.ntokens).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()

    return {precision: _best_time(partial(step, precision), reps, device) for precision in precisions}


def step_seconds(
    model: torch.nn.Module,
    device: torch.device,
    precision: str,
    *,
    batch_tokens: int = 1500,
    cache: Path | None = None,
    measure: Callable[..., dict[str, float]] | None = None,
) -> tuple[float, str]:
    """Seconds per training step of `model` in `precision` (:func:`probe`'s step, at the thread
    count set now), cached like the precision probe; and where the figure came from. `measure`
    is for tests."""
    key = probe_key(model, device, f"{batch_tokens} tokens")
    figures = _cached(cache, key) or {}
    if precision in figures:  # the precision probe timed it
        return figures[precision], _cached_in(cache)
    one = measure or (lambda m, d, tokens, p: probe(m, d, tokens, precisions=(p,)))
    figures, where = _figures(cache, f"{precision} step | {key}", lambda: one(model, device, batch_tokens, precision))
    return figures[precision], where


@dataclass
class Threads:
    threads: int
    reason: str


def choose_threads(
    requested: int | None,
    model: torch.nn.Module,
    *,
    batch_tokens: int = 1500,
    cache: Path | None = None,
    measure: Callable[..., dict[str, float]] | None = None,
    cores: int | None = None,
) -> Threads:
    """How many threads torch's operators use (``train.threads``; null: chosen here).

    The candidates are torch's default (one per physical core) and the cores this process
    may run on (hyperthreads included); where they differ, a timed fp32 training step
    decides, cached like the precision probe. `measure` and `cores` are for tests."""
    if requested:
        return Threads(requested, "train.threads asked for it")
    default = torch.get_num_threads()
    cores = cores or len(os.sched_getaffinity(0))
    candidates = sorted({default, cores})
    if len(candidates) == 1:
        return Threads(default, f"torch's default, one per core of the {cores} this process may use; nothing to time")
    key = f"threads {candidates} | " + probe_key(model, torch.device("cpu"), f"{batch_tokens} tokens")
    figures, where = _figures(cache, key, lambda: (measure or probe_threads)(model, candidates, batch_tokens))
    best = min(candidates, key=lambda n: figures[str(n)])
    timed = ", ".join(f"{figures[str(n)] * 1000:.0f} ms on {n}" for n in candidates)
    return Threads(best, f"timed probe: a {batch_tokens}-token fp32 training step takes {timed} threads ({where})")


def use_threads(requested: int | None, model: torch.nn.Module, *, batch_tokens: int, cache: Path | None) -> str:
    """Choose the thread count (:func:`choose_threads`), set it in torch, and say why."""
    choice = choose_threads(requested, model, batch_tokens=batch_tokens, cache=cache)
    torch.set_num_threads(choice.threads)
    return choice.reason


def probe_cache(artefacts: str | Path) -> Path:
    """Where the probes' figures are kept: one file per artefact folder (data.artefacts)."""
    return Path(artefacts) / "precision_probe.json"


def probe_threads(model: torch.nn.Module, candidates: list[int], batch_tokens: int) -> dict[str, float]:
    """Seconds per fp32 training step with each thread count (see :func:`probe`)."""
    from translate.batching import make_batch

    before = torch.get_num_threads()
    out = {}
    try:
        for n in candidates:
            torch.set_num_threads(n)
            with torch.random.fork_rng(devices=[]):
                out[str(n)] = _probe(model, torch.device("cpu"), batch_tokens, 3, make_batch, ("fp32",))["fp32"]
    finally:
        torch.set_num_threads(before)
    return out


PROBE_VERSION = 3  # what the probe times; 2: the output layer's products in bf16 under bf16; 3: translate.gru


def probe_key(model: torch.nn.Module, device: torch.device, work: str) -> str:
    """What a probe's figures depend on: machine, torch, threads, model shape, and the `work`
    timed ("1500 tokens": a training step's batch size). A CPU is named with its ISA extensions:
    one model name ("Intel(R) Xeon(R) Processor") covers virtual machines with and without bf16
    arithmetic, where the faster precision differs."""
    name = device_name(device)
    # dropout rates are not part of the shape: the step a run's dropout is chosen by (train.dropout_by_budget)
    # is timed before that choice, and the choices made after it read its figures
    rates = ("dropout", "annotation_dropout")
    shape = {k: v for k, v in asdict(model.cfg).items() if k not in rates}
    shape = json.dumps({**shape, "vocab": model.vocab_size}, sort_keys=True)
    threads = torch.get_num_threads()
    return (
        f"{name} | {device.type} | torch {torch.__version__} | {threads} threads | {work} | {shape}"
        f" | probe {PROBE_VERSION}"
    )


def _figures(cache: Path | None, key: str, measure: Callable[[], dict[str, float]]) -> tuple[dict[str, float], str]:
    """A probe's figures for `key`: from the cache, else measured now and kept; and where they came from."""
    figures = _cached(cache, key)
    if figures is not None:
        return figures, _cached_in(cache)
    figures = measure()
    _store(cache, key, figures)
    return figures, f"measured now, kept in {cache}" if cache is not None else "measured now"


def _cached_in(cache: Path | None) -> str:
    return f"cached in {cache}" if cache is not None else "this process"


def _cached(cache: Path | None, key: str) -> dict[str, float] | None:
    if cache is None:
        return _MEMO.get(key)
    try:
        return json.loads(cache.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError):
        return None


def _store(cache: Path | None, key: str, figures: dict[str, float]) -> None:
    _MEMO[key] = figures
    if cache is None:
        return
    try:
        known = json.loads(cache.read_text(encoding="utf-8")) if cache.exists() else {}
    except (OSError, ValueError):
        known = {}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**known, key: figures}, indent=1), encoding="utf-8")
        tmp.replace(cache)
    except OSError as err:
        log.warning("could not keep the precision probe's figures in %s (%s); it will run again", cache, err)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name with the ISA extensions that decide its speed."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}; {' '.join(cpu_features()) or 'no AVX2'}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        import platform

        return platform.processor()


def cpu_features() -> list[str]:
    """The instruction-set extensions that decide fp32 / bf16 / int8 speed, as /proc/cpuinfo lists them."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [w for w in wanted if w in flags]


def product_dtype(precision: str) -> torch.dtype:
    """The dtype of the output layer's matrix products (translate/loss.py) under `precision`."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager:
    """A bf16 autocast context for precision bf16, a null context for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


# ---- decoding ------------------------------------------------------------------------------

PROBE_SENTENCES = 32  # synthetic sentences the decoding probe translates
PROBE_LENGTH = 15  # their subwords, EOS excluded


def choose_decode_precision(
    requested: str,
    model: torch.nn.Module,
    device: torch.device,
    *,
    beam: int,
    cache: Path | None = None,
    measure: Callable[..., dict[str, float]] | None = None,
    supported: bool | None = None,
) -> Choice:
    """The precision to decode in (``decode.precision``), and why: fp32 and bf16 as asked;
    auto: bf16 where the hardware has it and a timed beam search of a synthetic batch takes
    at most BF16_MARGIN of fp32's time, cached like the training probe. `measure` and
    `supported` are there to be replaced in tests."""
    work = f"decoding {PROBE_SENTENCES} sentences, beam {beam}"
    return _choose(
        "decode.precision", requested, device, model, supported=supported, cache=cache, work=work, key_work=work,
        measure=lambda: (measure or probe_decoding)(model, device, beam),
    )  # fmt: skip


def probe_decoding(model: torch.nn.Module, device: torch.device, beam: int, reps: int = 3) -> dict[str, float]:
    """Seconds to beam-search PROBE_SENTENCES random sentences of PROBE_LENGTH subwords with
    `model` as it is (eval mode, int8 or not), in fp32 and in bf16 (:func:`decoding_precision`);
    the best of `reps` after one warm-up. Outputs are capped at the source length."""
    from translate.batching import make_batch
    from translate.search import beam_search

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.vocab_size, (PROBE_SENTENCES, PROBE_LENGTH), generator=g).tolist()
    batch = make_batch(ids).to(device)

    def search(precision: str) -> None:
        with decoding_precision(precision, device):
            beam_search(model, batch.src, batch.src_lengths, beam_size=beam, length_penalty_alpha=1.0,
                        max_len_a=1.0, max_len_b=0)  # fmt: skip

    return {precision: _best_time(partial(search, precision), reps, device) for precision in ("fp32", "bf16")}


@contextmanager
def decoding_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Decode in `precision`: fp32 as it is; bf16 on a CPU: oneDNN computes fp32 matrix
    products (linear layers, the GRU's) from bf16-rounded inputs, accumulating and returning
    fp32; on a GPU: bf16 autocast. The CPU setting is process-wide while the block runs,
    and put back after it."""
    if precision != "bf16":
        yield
    elif device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        flag = torch.backends.mkldnn.matmul
        before = flag.fp32_precision
        flag.fp32_precision = "bf16"
        try:
            yield
        finally:
            flag.fp32_precision = before
