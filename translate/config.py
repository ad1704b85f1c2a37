"""Typed configuration schemas, checked when they are built.

Every default lives here, in one dataclass field; the YAML files in ``conf/`` hold only
what differs from these. Hydra types each key against the fields when the configuration
is composed (a misspelled or ill-typed key fails there), and each dataclass checks its
choices and ranges in ``__post_init__``, which runs when the command line turns the
composed configuration into these objects, before any corpus is read. Each error names
the key, the bad value and what is allowed. Only the command-line layer sees
:class:`Config` whole; every other module takes the one part it needs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

SCHEDULES = ("cosine", "linear", "rsqrt", "constant", "plateau")
PRECISIONS = ("auto", "bf16", "fp32")
ON_COLLAPSE = ("restart", "warn")
FORMATS = ("auto", "hub", "text")
SPM_TYPES = ("bpe", "unigram", "char", "word")
PEERS = ("joeynmt",)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and what is allowed."""


class _Checked:
    """Range and choice checks that name the key (``section.field``) and the bad value."""

    section: ClassVar[str] = ""

    def _fail(self, name: str, need: str) -> None:
        key = f"{self.section}.{name}" if self.section else name
        raise ConfigError(f"{key}={getattr(self, name)!r} is not allowed: {need}")

    def _choice(self, name: str, allowed) -> None:
        if getattr(self, name) not in allowed:
            self._fail(name, f"choose one of {', '.join(allowed)}")

    def _at_least(self, name: str, low: float, *, optional: bool = False) -> None:
        value = getattr(self, name)
        if value is None and optional:
            return
        if value is None or not (value >= low and math.isfinite(value)):
            self._fail(name, f"must be a number >= {low}" + (" (or null)" if optional else ""))

    def _above(self, name: str, low: float, *, optional: bool = False) -> None:
        value = getattr(self, name)
        if value is None and optional:
            return
        if value is None or not (value > low and math.isfinite(value)):
            self._fail(name, f"must be a number > {low}" + (" (or null: no limit)" if optional else ""))

    def _fraction(self, name: str, *, closed: bool, optional: bool = False) -> None:
        value = getattr(self, name)
        if value is None and optional:
            return
        if value is None or not (0 <= value <= 1 if closed else 0 <= value < 1):
            self._fail(name, f"must lie in [0, 1{']' if closed else ')'}")


@dataclass
class DataConfig(_Checked):
    """Where the parallel corpus comes from and how it is cut into subwords."""

    section: ClassVar[str] = "data"

    name: str = "multi30k"  # names the artefact folder data/<name>/ and the run folder
    hub_id: str | None = "bentrevett/multi30k"  # datasets.load_dataset id, used when path is unset
    path: str | None = None  # local folder: hub layout (jsonl/parquet/...) or plain text files
    format: str = "auto"  # auto | hub | text
    src_lang: str = "en"
    tgt_lang: str = "de"
    # split names in the hub layout
    train_split: str = "train"
    valid_split: str = "validation"
    test_split: str = "test"
    # file prefixes in the plain-text layout: <path>/<prefix>.<lang>
    train_prefix: str = "train"
    valid_prefix: str = "val"
    test_prefix: str = "test2016"
    test_name: str = "test2016"  # how reports name the test split
    artefacts: str = "data"  # where the SentencePiece model is kept (data/<name>/)
    # joint SentencePiece vocabulary over source and target. On Multi30k en->de, 4,000 and 12,000 learned less per
    # sentence and per minute than 8,000 (README, Results: "The vocabulary size, the beam size and the learning rate")
    vocab_size: int = 8000
    spm_model_type: str = "bpe"  # bpe | unigram | char | word
    byte_fallback: bool = True  # unseen characters become byte pieces instead of <unk>
    spm_sample: int = 1_000_000  # SentencePiece trains on a random sample of this many sentences (both sides)
    max_len: int = 100  # training pairs with more subwords on either side are dropped

    def __post_init__(self) -> None:
        self._choice("format", FORMATS)
        self._choice("spm_model_type", SPM_TYPES)
        self._at_least("vocab_size", 8)  # 4 specials and a few pieces
        self._at_least("max_len", 1)
        self._at_least("spm_sample", 1)
        if not self.name or "/" in self.name:
            self._fail("name", "a non-empty folder name without '/'")
        if self.src_lang == self.tgt_lang:
            self._fail("tgt_lang", f"must differ from data.src_lang={self.src_lang!r}")


DEFAULT_DROPOUT = 0.2  # where model.dropout is unset and train.dropout_by_budget names no budget that fits
DEFAULT_PATIENCE = 10  # early stopping where train.patience is unset and there is no time budget
DEFAULT_EMB_DIM = 256  # where model.emb_dim is unset and train.emb_dim_by_budget names no budget that fits
# model settings that a new run decides from its time budget when unset: model key -> (train table, default)
BY_BUDGET = {"dropout": ("dropout_by_budget", DEFAULT_DROPOUT), "emb_dim": ("emb_dim_by_budget", DEFAULT_EMB_DIM)}


def is_direction(key: str) -> bool:
    """A key of the per-direction tables: SRC-TGT, e.g. de-en."""
    return isinstance(key, str) and re.fullmatch(r"[^-\s]+-[^-\s]+", key) is not None


def time_to_bleu_run(entry: str) -> tuple[str, str, float] | None:
    """An entry of bench.time_to_bleu, SRC-TGT:MINUTES, as (src, tgt, minutes); None if it is not one."""
    direction, _, minutes = entry.rpartition(":") if isinstance(entry, str) else ("", "", "")
    minutes = budget_minutes(minutes) if is_direction(direction) and ":" not in direction else None
    return (*direction.split("-"), minutes) if minutes else None


def budget_minutes(key: str) -> float | None:
    """A key of the per-budget tables ("45": a budget of 45 minutes or more) as minutes; None if it is not one."""
    try:
        minutes = float(key)
    except (TypeError, ValueError):
        return None
    return minutes if math.isfinite(minutes) and minutes >= 0 else None


def for_budget(by_budget: dict[str, Any], max_time: float | None, default: Any) -> Any:
    """The entry of a per-budget table (train.dropout_by_budget, train.emb_dim_by_budget) for a run
    of `max_time` minutes: the entry of the longest budget that fits (<= max_time; with no time
    limit, the longest of all), else `default`. An entry of train.dropout_by_budget may itself be a
    table by updates (:func:`for_updates`)."""
    entries = [(float(minutes), value) for minutes, value in by_budget.items()]  # keys checked by TrainConfig
    fitting = [(minutes, value) for minutes, value in entries if max_time is None or minutes <= max_time]
    return max(fitting, key=lambda entry: entry[0])[1] if fitting else default


def for_updates(by_updates: dict[str, float], updates: float) -> float:
    """The value of a table by updates ({"0": 0.5, "7000": 0.6}: 0.5 below 7000 updates, 0.6 from
    7000 on) for a run expected to make `updates` updates: the entry of the most updates that fits."""
    return max((int(key), value) for key, value in by_updates.items() if int(key) <= updates)[1]


def is_update_table(entry: Any) -> bool:
    """An entry of train.dropout_by_budget that is a table by updates, UPDATES -> dropout, with an entry
    for 0 so that every run finds one."""
    return (
        isinstance(entry, Mapping)
        and bool(entry)
        and all(_is_count(k) and _is_dropout(v) for k, v in entry.items())
        and any(int(k) == 0 for k in entry)
    )


def _is_count(key: Any) -> bool:
    """A key of a table by updates: a whole number >= 0, as written in YAML ("7000") or on the command line (7000)."""
    return (isinstance(key, str) and key.isdigit()) or (_is_int(key) and key >= 0)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_dropout(value: Any) -> bool:
    return _is_number(value) and 0 <= value < 1


@dataclass
class ModelConfig(_Checked):
    """Attention GRU encoder-decoder (Bahdanau et al. 2015; Luong et al. 2015)."""

    section: ClassVar[str] = "model"

    emb_dim: int | None = None  # null: train.emb_dim_by_budget picks it from the time budget (train command)
    enc_hidden: int = 512  # per direction; annotations are 2 * enc_hidden wide
    dec_hidden: int = 512
    enc_layers: int = 1
    dec_layers: int = 1
    decoder: str = "fused"  # fused (Luong/GNMT, one nn.GRU call) | input_feed (Bahdanau)
    attention: str = "general"  # translate.attention.SCORES: bahdanau | dot | general | scaled_dot | multihead | cosine
    attn_dim: int = 512  # hidden size of additive / scaled / multi-head / cosine scoring
    heads: int = 4  # multihead attention, and the encoder's self-attention
    encoder_self_attention: bool = False  # one multi-head self-attention layer over the bi-GRU annotations
    dropout: float | None = None  # null: train.dropout_by_budget picks it from the time budget (train command)
    annotation_dropout: float = 0.0  # dropout on the encoder's annotations and final state (what the decoder reads)
    tie_output: bool = True  # target embedding shared with the output layer
    share_embeddings: bool = True  # source and target embeddings shared (joint vocabulary)

    def __post_init__(self) -> None:
        from translate.attention import SCORES, check_dims
        from translate.decoder import VARIANTS

        for name in ("enc_hidden", "dec_hidden", "enc_layers", "dec_layers", "attn_dim", "heads"):
            self._at_least(name, 1)
        self._at_least("emb_dim", 1, optional=True)
        self._fraction("dropout", closed=False, optional=True)
        self._fraction("annotation_dropout", closed=False)
        self._choice("decoder", VARIANTS)
        self._choice("attention", tuple(SCORES))
        sizes = dict(query_dim=self.dec_hidden, key_dim=2 * self.enc_hidden, attn_dim=self.attn_dim, heads=self.heads)
        check_dims(self.attention, **sizes)
        if self.encoder_self_attention and (2 * self.enc_hidden) % self.heads:
            self._fail("heads", f"must divide the annotation size 2 x model.enc_hidden = {2 * self.enc_hidden}")

    @property
    def dropout_rate(self) -> float:
        """model.dropout as set or resolved from the time budget (the train command), else the default."""
        return DEFAULT_DROPOUT if self.dropout is None else self.dropout

    @property
    def emb_size(self) -> int:
        """model.emb_dim as set or resolved from the time budget (the train command), else the default."""
        return DEFAULT_EMB_DIM if self.emb_dim is None else self.emb_dim


def model_for_budget(
    model: ModelConfig,
    train: TrainConfig,
    *,
    resumed: dict[str, Any] | None = None,
    updates: Callable[[ModelConfig], tuple[float, str]] | None = None,
) -> tuple[ModelConfig, dict[str, str]]:
    """`model` with its dropout and embedding size decided for train.max_time, and why, per key:
    as set; else the resumed run's own (`resumed`, its stored model config: a longer budget on
    resumption changes nothing); else the budget's entry in train.dropout_by_budget /
    train.emb_dim_by_budget (:func:`for_budget`). A dropout entry that is a table by updates
    takes the updates the run is expected to make from `updates` (given the model with its
    embedding size decided and the dropout of the most updates; it returns the count and how it
    was estimated: the train command times a training step); without `updates`, the entry of the
    most updates."""
    budget = f"a {train.max_time:g}-minute budget" if train.max_time else "no time limit"
    decided, why = {}, {}
    for key, (table, default) in BY_BUDGET.items():
        value, before = getattr(model, key), (resumed or {}).get(key)
        if value is not None:
            if before is not None and before != value:
                raise ConfigError(
                    f"model.{key}={value}, but the run being resumed was built with {before}: "
                    f"resume it without model.{key}, or choose another run_dir=... (overwrite=true replaces the run)"
                )
            why[key] = f"model.{key}"
        elif before is not None:
            decided[key], why[key] = before, "the resumed run's"
        else:
            decided[key] = for_budget(getattr(train, table), train.max_time, default)
            why[key] = f"train.{table} for {budget}"
    if is_update_table(decided.get("dropout")):
        by_updates = decided["dropout"]
        decided["dropout"] = for_updates(by_updates, math.inf)
        if updates is None:
            why["dropout"] += ", the entry of the most updates (no step timed)"
        else:
            expected, how = updates(replace(model, **decided))
            decided["dropout"] = for_updates(by_updates, expected)
            why["dropout"] += f" and about {expected:,.0f} updates ({how})"
    return replace(model, **decided), why


DEFAULT_WARMUP = 100  # steps of linear warm-up, where train.warmup_by_direction names no other
DEFAULT_LR = 2e-3  # peak learning rate, where train.lr_by_direction names no other


@dataclass
class TrainConfig(_Checked):
    section: ClassVar[str] = "train"

    seed: int = 1234
    # padded tokens per batch, the longer side (length-bucketed). 1000 made 28% more updates in 60 minutes on the
    # AVX2 AMD and learned no more per token: 0.7 beam-5 validation BLEU down (README, Results, "Dropout 0.4 and ...")
    batch_tokens: int = 1500
    max_time: float | None = None  # wall-clock budget in minutes (validation included); null = none
    max_steps: int | None = None  # null = none
    max_epochs: int = 100
    lr: float | None = None  # peak; null: lr_by_direction's entry for the run's direction, else 2e-3
    # measured per direction on Multi30k (README, Results: "Learning rate"): de-en 3e-3 beat 2e-3; en-de at
    # 3e-3 fell far behind with its 100-step warm-up and gained nothing in 60 minutes with a 400-step one
    lr_by_direction: dict[str, float] = field(default_factory=lambda: {"de-en": 3e-3})
    warmup_steps: int | None = None  # null: warmup_by_direction's entry for the run's direction, else 100
    # measured per direction on Multi30k (README, Results): de-en learned slowly after a 100-step warm-up
    warmup_by_direction: dict[str, int] = field(default_factory=lambda: {"de-en": 400})
    # model.dropout and model.emb_dim unset: see for_budget and model_for_budget. Measured on Multi30k (README,
    # Results): dropout 0.2 overfits in 60 minutes, 0.3 is worse in 35, 0.4 beat 0.3 on validation in 60 on two
    # machine kinds; in 60, embeddings 512 at dropout 0.5 beat 256 at 0.4 (two seeds), 512 at 0.4 overfit; 512
    # at 0.6 beat 512 at 0.5 with about 10,000 updates (two seeds each, AMX Xeon), 0.5 beat 0.6 with about
    # 5,000 (AVX2 AMD): dropout by the updates the budget buys, which the train command times. At about 4,600 updates
    # 0.4 tied 0.5 (one seed, AVX2 AMD: README, Results, "Dropout 0.4 and smaller batches"), so no entry of its own
    dropout_by_budget: dict[str, Any] = field(default_factory=lambda: {"45": {"0": 0.5, "7000": 0.6}})
    emb_dim_by_budget: dict[str, int] = field(default_factory=lambda: {"45": 512})
    schedule: str = "cosine"  # cosine | linear | rsqrt | constant | plateau
    min_lr_ratio: float = 0.05  # floor of the decay, as a fraction of lr
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    weight_decay: float = 0.0
    clip_norm: float = 1.0  # 0 = no clipping
    max_nonfinite: int = 10  # consecutive NaN/inf losses (updates skipped) before training stops
    label_smoothing: float = 0.1
    bpe_dropout: float = 0.0  # each SentencePiece merge of a training sentence skipped with this probability; 0 = off
    bpe_dropout_target: bool = True  # false: BPE-dropout on the source side only
    valid_every: int = 250  # steps between validations
    valid_beam: int = 1  # beam used for validation BLEU (1 = greedy); validation never uses decode.*
    valid_batch_size: int = 64  # sentences per validation decoding batch
    valid_sentences: int | None = 5000  # pairs validated during training: the split's first N (null = all)
    average: int = 5  # the mean weights of the last N validations: a finalist at the end of the run; 0 = off
    # at the end of the run the finalists (the best single checkpoint, the last weights, the average) are scored
    # again on validation with this beam, as translation decodes (decode.beam_size is 5), and the highest becomes
    # best.pt: greedy validation BLEU picked worse finalists (README, Results: "The end-of-run choice");
    # 1 = choose by greedy BLEU, as validation does
    final_beam: int = 5
    # validations without a BLEU gain before early stopping; 0 = never; null: 10 without a time
    # budget, never with one (train.max_time: the schedule decays to the budget's end; see stop_after)
    patience: int | None = None
    log_every: int = 100
    # an attention collapse (README, Results: "An attention collapse"): the validation translations' attention
    # rests on the source's end (translate.evaluation.eos_attention) instead of aligning, and the model translates
    # from the encoder's final state alone, 9 BLEU down, with nothing else in the log to say so. Judged at each
    # validation from collapse_after updates on: above collapse_share (aligning models: about 0.1), a warning;
    # on_collapse=restart: at the first judged validation, fresh weights drawn from another seed train in the
    # rest of the budget (once a run)
    collapse_share: float = 0.3  # 1 = never judged
    collapse_after: int = 1000
    on_collapse: str = "restart"  # restart | warn
    precision: str = "auto"  # auto (bf16 where supported) | bf16 | fp32
    threads: int | None = None  # torch intra-op threads; null: torch's default or all usable cores, timed

    @property
    def warmup(self) -> int:
        """Warm-up steps: warmup_steps as set or resolved from the direction (to_config), else the default."""
        return DEFAULT_WARMUP if self.warmup_steps is None else self.warmup_steps

    @property
    def peak_lr(self) -> float:
        """The peak learning rate: lr as set or resolved from the direction (to_config), else the default."""
        return DEFAULT_LR if self.lr is None else self.lr

    def _table(self, name: str, good, need: str, *, by_budget: bool = False) -> None:
        """A per-direction table (SRC-TGT keys) or a per-budget one (MINUTES keys) of numbers, not
        booleans, that `good` accepts."""
        key_ok, keys = (lambda k: budget_minutes(k) is not None, "MINUTES") if by_budget else (is_direction, "SRC-TGT")
        for key, value in getattr(self, name).items():
            if not (key_ok(key) and good(value)):
                self._fail(name, f"entries {keys}: {need}")

    def __post_init__(self) -> None:
        self._choice("schedule", SCHEDULES)
        self._choice("precision", PRECISIONS)
        self._choice("on_collapse", ON_COLLAPSE)
        if not 0 < self.collapse_share <= 1:
            self._fail("collapse_share", "must lie in (0, 1]; 1 = never judged")
        counts = ("batch_tokens", "max_epochs", "plateau_patience", "max_nonfinite", "valid_every", "log_every",
                  "collapse_after")  # fmt: skip
        for name in (*counts, "valid_beam", "final_beam", "valid_batch_size"):
            self._at_least(name, 1)
        self._above("max_time", 0, optional=True)
        self._at_least("max_steps", 1, optional=True)
        self._at_least("threads", 1, optional=True)
        self._at_least("valid_sentences", 1, optional=True)
        if self.lr is not None:
            self._above("lr", 0)
        self._at_least("warmup_steps", 0, optional=True)
        for name in ("weight_decay", "clip_norm", "average"):
            self._at_least(name, 0)
        self._at_least("patience", 0, optional=True)
        self._table("warmup_by_direction", lambda v: _is_int(v) and v >= 0, "steps >= 0, e.g. {de-en: 400}")
        self._table(
            "lr_by_direction", lambda v: _is_number(v) and v > 0 and math.isfinite(v),
            "learning rate > 0, e.g. {de-en: 0.003}",
        )  # fmt: skip
        self._table(
            "dropout_by_budget", lambda v: _is_dropout(v) or is_update_table(v),
            "dropout in [0, 1), e.g. {'45': 0.6}, or a table by updates with an entry for 0, "
            "e.g. {'45': {'0': 0.5, '7000': 0.6}}", by_budget=True,
        )  # fmt: skip
        for minutes, entry in self.dropout_by_budget.items():  # keys as YAML writes them ("7000"), whatever wrote them
            if isinstance(entry, Mapping):
                counts = {str(int(k)): v for k, v in entry.items()}
                if len(counts) < len(entry):
                    self._fail("dropout_by_budget", f"the table of {minutes} minutes names an update count twice")
                self.dropout_by_budget[minutes] = counts
        self._table(
            "emb_dim_by_budget", lambda v: _is_int(v) and v >= 1, "embedding size >= 1, e.g. {'45': 512}",
            by_budget=True,
        )  # fmt: skip
        for name in ("adam_beta1", "adam_beta2", "label_smoothing", "bpe_dropout"):
            self._fraction(name, closed=False)
        self._fraction("min_lr_ratio", closed=True)
        if not 0 < self.plateau_factor <= 1:
            self._fail("plateau_factor", "must lie in (0, 1]")

    @property
    def stop_after(self) -> int:
        """Validations without a BLEU gain that end the run (0: never): train.patience as set;
        unset, never under a time budget, else 10. Under train.max_time the learning rate decays
        over the whole budget, and a noisy validation BLEU can stall while the model still
        learns: a 60-minute run stopped after 46 minutes with its validation loss still falling
        (README, "Early stopping under a time budget"). best.pt is the best validation either way."""
        if self.patience is not None:
            return self.patience
        return 0 if self.max_time else DEFAULT_PATIENCE


@dataclass
class DecodeConfig(_Checked):
    section: ClassVar[str] = "decode"

    # beams of 8, 10 and 12 scored no higher than 5 on validation, on six 60-minute en->de models (README, Results:
    # "The vocabulary size, the beam size and the learning rate")
    beam_size: int = 5
    length_penalty: float = 1.0  # GNMT alpha; 0 = raw log-probability
    max_len_a: float = 1.5  # output length limit: a * source_length + b
    max_len_b: int = 10
    batch_size: int = 64  # sentences per decoding batch, at most
    # and at most this many beam rows x source subwords per batch, which bounds decoding memory (README)
    batch_tokens: int = 20000
    int8: bool = False  # CPU only: the decoder's matrix products in int8 (translate/quantize.py)
    # fp32 | bf16 | auto (a timed probe decides, translate/precision.py). fp32 by default: bf16 changes
    # a few outputs and, rarely, makes one depend on its batch (README, "bf16 decoding")
    precision: str = "fp32"
    n_best: int = 1  # hypotheses kept per sentence (<= beam_size); make bleu scores the first, writes all
    # a sentence ends once a step's best candidate ends (OpenNMT-py, JoeyNMT); false: once it
    # holds beam_size finished hypotheses (fairseq), slower
    early_stop: bool = False
    checkpoint: str = "best"  # best | last, inside run_dir, or a path to a .pt file

    def __post_init__(self) -> None:
        self._at_least("beam_size", 1)
        self._at_least("batch_size", 1)
        self._at_least("batch_tokens", 1)
        self._at_least("n_best", 1)
        self._choice("precision", PRECISIONS)
        if self.n_best > self.beam_size:
            self._fail("n_best", f"must not exceed decode.beam_size={self.beam_size}")
        for name in ("length_penalty", "max_len_a", "max_len_b"):
            self._at_least(name, 0)
        if not self.checkpoint:
            self._fail("checkpoint", "best, last or a path to a .pt file")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    run_dir: str = "runs/${data.name}.${data.src_lang}-${data.tgt_lang}"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    overwrite: bool = False  # allow a run into a folder that holds another config's run

    def __post_init__(self) -> None:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device={self.device!r} is not allowed: choose auto, cpu, cuda or cuda:N")
        if self.train.bpe_dropout and self.data.spm_model_type != "bpe":
            raise ConfigError(
                f"train.bpe_dropout={self.train.bpe_dropout} needs data.spm_model_type=bpe, "
                f"not {self.data.spm_model_type!r}: set train.bpe_dropout=0 or use a BPE model"
            )


@dataclass
class BenchConfig(_Checked):
    """What `python -m translate bench` measures (see translate/benchmark.py)."""

    section: ClassVar[str] = "bench"

    quick: bool = False  # throughputs and decoding speeds only, no time-to-BLEU runs
    peer: str | None = None  # joeynmt: measure the peer the way ../shared/peers/joeynmt does
    peer_kit: str = "../shared/peers/joeynmt"
    variants: list[str] = field(default_factory=lambda: ["fused", "input_feed"])
    throughput_seconds: float = 60.0  # timed training per decoder variant, after warm-up
    warmup_steps: int = 5
    budget_minutes: float = 35.0  # the budget whose default model (embeddings, dropout) the throughput figures train
    # time-to-BLEU runs, each SRC-TGT:MINUTES: a fresh `train` at the defaults for that budget,
    # then beam-5 BLEU on the test split; by default issue 11's three targets
    time_to_bleu: list[str] = field(default_factory=lambda: ["en-de:35", "de-en:35", "en-de:60"])
    int8: bool = True  # also measure int8 decoding (translate/quantize.py)
    checkpoint: str | None = None  # model for the decoding figures; default: en-de time-to-BLEU or run_dir best.pt
    quick_train_minutes: float = 3.0  # quick mode without a checkpoint trains one this long
    peer_train_seconds: int = 300  # peer throughput probe, quick mode with a peer model of an earlier run

    def __post_init__(self) -> None:
        from translate.decoder import VARIANTS

        if self.peer is not None:
            self._choice("peer", PEERS)
        for variant in self.variants:
            if variant not in VARIANTS:
                self._fail("variants", f"each one of {', '.join(VARIANTS)}")
        runs = [time_to_bleu_run(entry) for entry in self.time_to_bleu]
        if None in runs:
            self._fail("time_to_bleu", "each SRC-TGT:MINUTES with MINUTES > 0, e.g. [en-de:35,de-en:35]")
        if len(set(runs)) < len(runs):
            self._fail("time_to_bleu", "each run once")
        for name in ("throughput_seconds", "budget_minutes", "quick_train_minutes", "peer_train_seconds"):
            self._above(name, 0)
        self._at_least("warmup_steps", 0)


@dataclass
class BenchRunConfig(Config):
    """The configuration of `python -m translate bench`: a run's, plus what to measure.

    Training runs never carry bench settings (their schema is :class:`Config`)."""

    bench: BenchConfig = field(default_factory=BenchConfig)


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore, so `conf/config.yaml` is typed.

    ``schema=run`` (the default) types a training or decoding run; the bench command
    composes with ``schema=bench``, which adds the ``bench`` section."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="schema", name="run", node=Config, package="_global_")
    cs.store(group="schema", name="bench", node=BenchRunConfig, package="_global_")


def to_config(dcfg) -> Config:
    """A composed Hydra config -> :class:`Config` (or :class:`BenchRunConfig`), checked.

    Hydra rejects a misspelled key on its own; a key added with ``+key=value`` would
    otherwise be dropped without a word. Choices and ranges are checked by the
    dataclasses' ``__post_init__`` as the objects are built. An unset warm-up and learning
    rate are resolved here from the direction; an unset dropout and embedding size stay null until the train
    command knows the run (a resumed run keeps its own, :func:`translate.cli.train`).
    """
    from dataclasses import fields, is_dataclass

    from omegaconf import OmegaConf

    def check(node: dict, schema: type, where: str) -> None:
        known = {f.name: f for f in fields(schema)}
        for key, value in node.items():
            if key not in known:
                raise ConfigError(f"unknown config key '{where}{key}' (known: {', '.join(known)})")
            default = getattr(schema(), key)
            if isinstance(value, dict) and is_dataclass(default):
                check(value, type(default), f"{where}{key}.")

    direction = f"{dcfg.data.src_lang}-{dcfg.data.tgt_lang}"  # the per-direction defaults
    if dcfg.train.warmup_steps is None:
        dcfg.train.warmup_steps = dcfg.train.warmup_by_direction.get(direction, DEFAULT_WARMUP)
    if dcfg.train.lr is None:
        dcfg.train.lr = dcfg.train.lr_by_direction.get(direction, DEFAULT_LR)
    plain = OmegaConf.to_container(dcfg, resolve=False)
    plain.pop("hydra", None)
    check(plain, OmegaConf.get_type(dcfg) or Config, "")
    return OmegaConf.to_object(dcfg)
