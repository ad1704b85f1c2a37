"""Typed configuration schemas.

Every default lives here, in one dataclass field. ``conf/`` mirrors these classes; Hydra
validates each YAML file against them when the configuration is composed, so a
misspelled or ill-typed key fails before any work starts. Only the command-line layer
sees :class:`Config` whole; every other module takes the one part it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """Where the parallel corpus comes from and how it is cut into subwords."""

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
    vocab_size: int = 8000  # joint SentencePiece vocabulary over source and target
    spm_model_type: str = "bpe"  # bpe | unigram
    byte_fallback: bool = True  # unseen characters become byte pieces instead of <unk>
    max_len: int = 100  # training pairs with more subwords on either side are dropped


@dataclass
class ModelConfig:
    """Attention GRU encoder-decoder (Bahdanau et al. 2015; Luong et al. 2015)."""

    emb_dim: int = 256
    enc_hidden: int = 512  # per direction; annotations are 2 * enc_hidden wide
    dec_hidden: int = 512
    enc_layers: int = 1
    dec_layers: int = 1
    decoder: str = "fused"  # fused (Luong/GNMT, one nn.GRU call) | input_feed (Bahdanau)
    attention: str = "general"  # bahdanau | dot | general | scaled_dot | multihead
    attn_dim: int = 512  # hidden size of additive / scaled / multi-head scoring
    heads: int = 4  # multihead only
    dropout: float = 0.2
    tie_output: bool = True  # target embedding shared with the output layer
    share_embeddings: bool = True  # source and target embeddings shared (joint vocabulary)


@dataclass
class TrainConfig:
    seed: int = 1234
    batch_tokens: int = 1500  # padded tokens per batch, the longer side (length-bucketed)
    max_time: float | None = None  # wall-clock budget in minutes (validation included)
    max_steps: int | None = None
    max_epochs: int = 100
    lr: float = 2e-3
    warmup_steps: int = 100
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
    valid_every: int = 250  # steps between validations
    valid_beam: int = 1  # beam used for validation BLEU (1 = greedy)
    patience: int = 10  # validations without a BLEU gain before early stopping; 0 = never
    log_every: int = 100
    precision: str = "auto"  # auto (bf16 where supported) | bf16 | fp32
    threads: int | None = None  # torch intra-op threads; None keeps torch's default


@dataclass
class DecodeConfig:
    beam_size: int = 5
    length_penalty: float = 1.0  # GNMT alpha; 0 = raw log-probability
    max_len_a: float = 1.5  # output length limit: a * source_length + b
    max_len_b: int = 10
    n_best: int = 1
    batch_size: int = 64  # sentences per decoding batch
    int8: bool = False  # CPU only: the decoder's matrix products in int8 (translate/quantize.py)
    checkpoint: str = "best"  # best | last, inside run_dir, or a path to a .pt file


@dataclass
class BenchConfig:
    """What `python -m translate bench` measures (see translate/benchmark.py)."""

    quick: bool = False  # throughputs and decoding speeds only, no time-to-BLEU runs
    peer: str | None = None  # joeynmt: measure the peer the way ../shared/peers/joeynmt does
    peer_kit: str = "../shared/peers/joeynmt"
    variants: list[str] = field(default_factory=lambda: ["fused", "input_feed"])
    throughput_seconds: float = 60.0  # timed training per decoder variant, after warm-up
    warmup_steps: int = 5
    budget_minutes: float = 35.0  # time-to-BLEU training budget per direction
    directions: list[str] = field(default_factory=lambda: ["en-de", "de-en"])
    int8: bool = True  # also measure int8 decoding (translate/quantize.py)
    checkpoint: str | None = None  # model for the decoding figures; default: en-de time-to-BLEU or run_dir best.pt
    quick_train_minutes: float = 3.0  # quick mode without a checkpoint trains one this long
    peer_train_seconds: int = 300  # peer throughput probe (quick); full mode trains it budget_minutes


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    run_dir: str = "runs/${data.name}.${data.src_lang}-${data.tgt_lang}"
    device: str = "auto"  # auto | cpu | cuda
    overwrite: bool = False  # allow a run into a folder that holds another config's run


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore, so `conf/config.yaml` is typed."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)


class ConfigError(ValueError):
    """A configuration key the schema does not have."""


def to_config(dcfg) -> Config:
    """A composed Hydra config -> :class:`Config`, refusing keys the dataclasses lack.

    Hydra rejects a misspelled key on its own; a key added with ``+key=value`` would
    otherwise be dropped without a word.
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

    plain = OmegaConf.to_container(dcfg, resolve=False)
    plain.pop("hydra", None)
    check(plain, Config, "")
    return OmegaConf.to_object(dcfg)
