"""Every YAML in conf/ composes into the typed dataclasses and holds only what differs from
their defaults; bad keys, bad choices and out-of-range values fail when the configuration
is composed, naming the key and what is allowed."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from translate.attention import SCORES
from translate.checkpoint import _changed
from translate.cli import CONF_DIR, _flatten, run_identity
from translate.config import (
    BenchRunConfig,
    Config,
    ConfigError,
    ModelConfig,
    TrainConfig,
    for_budget,
    for_updates,
    model_for_budget,
    register_configs,
    time_to_bleu_run,
    to_config,
)
from translate.decoder import VARIANTS
from translate.schedule import PACE, expected_updates

from .conftest import run_cli

GROUPS = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((Path(CONF_DIR) / g).glob("*.yaml"))]


STUDY_VARIANTS = ("bahdanau", "dot", "general", "scaled_dot", "multihead", "self_attention")


def compose_config(overrides: list[str]) -> Config:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return to_config(cfg)


def test_the_groups_and_options_the_readme_names_exist():
    assert {"data", "model", "train", "decode", "experiment", "debug", "variant"} <= set(GROUPS)
    named = {
        *[("data", "multi30k"), ("data", "text"), ("model", "gru"), ("model", "bahdanau"), ("train", "default")],
        *[("decode", "beam"), ("decode", "greedy"), ("experiment", "multi30k_de_en"), ("debug", "tiny")],
        *[("experiment", "attention_study"), *(("variant", v) for v in STUDY_VARIANTS)],
    }
    assert named <= set(OPTIONS)


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_yaml_composes_into_the_dataclasses(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "text"):
        overrides.append("data.path=somewhere")
    cfg = compose_config(overrides)
    assert type(cfg) is Config
    prefix = "debug." if group == "debug" else ""
    assert cfg.run_dir == f"runs/{prefix}{cfg.data.name}.{cfg.data.src_lang}-{cfg.data.tgt_lang}"


@pytest.mark.parametrize("group,option", [o for o in OPTIONS if o[0] != "experiment"])
def test_yaml_files_hold_only_what_differs_from_the_dataclass_defaults(group, option):
    """A default lives in its dataclass field alone. (Experiments pin their values on
    purpose, so that a changed default does not move a published run.)"""
    text = (Path(CONF_DIR) / group / f"{option}.yaml").read_text()
    node = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / group / f"{option}.yaml")) or {}
    defaults = _flatten(asdict(Config()))
    where = "" if "@package _global_" in text else f"{group}."
    same = [k for k, v in _flatten(node, where).items() if k in defaults and defaults[k] == v]
    assert not same, f"conf/{group}/{option}.yaml repeats dataclass defaults: {same}"


def test_the_study_variants_are_the_five_score_functions_and_self_attention():
    study = [compose_config(["experiment=attention_study", f"variant={v}"]).model for v in STUDY_VARIANTS]
    assert [(m.attention, m.encoder_self_attention) for m in study] == [
        *((a, False) for a in ("bahdanau", "dot", "general", "scaled_dot", "multihead")),
        ("general", True),
    ]
    assert {m.enc_hidden for m in study} == {256}


def test_defaults_are_the_documented_pipeline():
    cfg = compose_config([])
    assert (cfg.data.hub_id, cfg.data.src_lang, cfg.data.tgt_lang) == ("bentrevett/multi30k", "en", "de")
    assert cfg.run_dir == "runs/multi30k.en-de"
    assert cfg.decode.beam_size == 5 and cfg.device == "auto"
    default = Config(run_dir="runs/multi30k.en-de")
    from_direction = replace(default.train, warmup_steps=default.train.warmup, lr=default.train.peak_lr)
    resolved = replace(default, train=from_direction)
    assert cfg == resolved  # the YAML adds nothing to the dataclass defaults


def test_the_warm_up_default_follows_the_direction_unless_set():
    assert compose_config([]).train.warmup_steps == 100
    de_en = ["data.src_lang=de", "data.tgt_lang=en"]
    assert compose_config(de_en).train.warmup_steps == 400  # train.warmup_by_direction
    assert compose_config([*de_en, "train.warmup_steps=50"]).train.warmup_steps == 50  # asked for: kept
    assert compose_config(["+train.warmup_by_direction.en-de=300"]).train.warmup_steps == 300
    with pytest.raises(ConfigError, match="warmup_by_direction"):
        compose_config(["+train.warmup_by_direction.ende=300"])


def test_the_learning_rate_default_follows_the_direction_unless_set():
    de_en = ["data.src_lang=de", "data.tgt_lang=en"]
    assert compose_config([]).train.lr == 2e-3 == TrainConfig().peak_lr  # en-de: no entry, the default
    assert compose_config(de_en).train.lr == 3e-3  # train.lr_by_direction
    assert compose_config([*de_en, "train.lr=0.001"]).train.lr == 1e-3  # asked for: kept
    assert compose_config(["+train.lr_by_direction.en-de=0.004"]).train.lr == 4e-3
    assert compose_config(["experiment=multi30k_de_en"]).train.lr == 3e-3  # the preset gets it from its direction
    for bad in (
        "+train.lr_by_direction.ende=0.003",
        "train.lr_by_direction.de-en=0",
        "train.lr_by_direction.de-en=nan",
    ):
        with pytest.raises(ConfigError, match="lr_by_direction"):
            compose_config([bad])


def test_the_dropout_and_embedding_defaults_follow_the_time_budget():
    train = compose_config([]).train
    by_budget = train.dropout_by_budget
    assert for_budget(by_budget, 35, 0.2) == 0.2  # below every entry: the default
    by_updates = for_budget(by_budget, 60, 0.2)  # {"45": {"0": 0.5, "7000": 0.6}}: a table by updates
    assert for_budget(by_budget, 45, 0.2) == by_updates == for_budget(by_budget, None, 0.2)  # no limit: the longest
    assert [for_updates(by_updates, n) for n in (0, 4500, 6999, 7000, 10_000, math.inf)] == [0.5] * 3 + [0.6] * 3
    assert [for_budget(train.emb_dim_by_budget, m, 256) for m in (35, 60, None)] == [256, 512, 512]
    longer = compose_config(["+train.dropout_by_budget.90=0.4", "train.dropout_by_budget.45=0.35"])
    assert [for_budget(longer.train.dropout_by_budget, m, 0.2) for m in (10, 60, 120)] == [0.2, 0.35, 0.4]
    assert compose_config(["train.max_time=60"]).model.dropout is None  # decided by the train command, which
    assert compose_config(["model.dropout=0.1"]).model.dropout == 0.1  # knows whether it resumes a run
    assert compose_config(["train.max_time=60"]).model.emb_dim is None
    flat = compose_config(["train.dropout_by_budget.45=0.6"]).train.dropout_by_budget  # a plain entry still does
    assert [for_budget(flat, m, 0.2) for m in (35, 60)] == [0.2, 0.6]
    own = compose_config(["train.dropout_by_budget.45.7000=0.4", "+train.dropout_by_budget.90={0: 0.3, 500: 0.7}"])
    own = own.train.dropout_by_budget
    assert own["90"] == {"0": 0.3, "500": 0.7}  # keys as the YAML writes them
    assert [for_updates(for_budget(own, 60, 0.2), n) for n in (6999, 7000)] == [0.5, 0.4]
    assert [for_updates(for_budget(own, 90, 0.2), n) for n in (499, 500)] == [0.3, 0.7]
    for bad in (
        "+train.dropout_by_budget.long=0.4",
        "train.dropout_by_budget.45=1.5",
        "+train.dropout_by_budget.90={7000: 0.6}",  # no entry for 0: a short run would find none
        "+train.dropout_by_budget.90={0: 0.5, 7000: 1.5}",
        "+train.dropout_by_budget.90={0: 0.5, many: 0.6}",
        "+train.dropout_by_budget.90={0: 0.5, -5: 0.6}",
        "+train.dropout_by_budget.90={}",
        "++train.dropout_by_budget.45={0: 0.3}",  # merged: both '0' and 0
    ):
        with pytest.raises(ConfigError, match="dropout_by_budget"):
            compose_config([bad])
    for bad in ("+train.emb_dim_by_budget.long=512", "train.emb_dim_by_budget.45=0"):
        with pytest.raises(ConfigError, match="emb_dim_by_budget"):
            compose_config([bad])
    unresolved = ModelConfig()  # built directly, without a run: the defaults
    assert unresolved.dropout is None and unresolved.dropout_rate == 0.2
    assert unresolved.emb_dim is None and unresolved.emb_size == 256


NOT_TIMED = ", the entry of the most updates (no step timed)"  # model_for_budget without a timed step


@pytest.mark.parametrize(
    ("overrides", "dropout", "emb_dim", "why"),
    [
        (["train.max_time=35"], 0.2, 256, "train.dropout_by_budget for a 35-minute budget"),
        (["train.max_time=60"], 0.6, 512, "train.dropout_by_budget for a 60-minute budget" + NOT_TIMED),
        ([], 0.6, 512, "train.dropout_by_budget for no time limit" + NOT_TIMED),
        (["train.max_time=60", "model.dropout=0.3", "model.emb_dim=128"], 0.3, 128, "model.dropout"),
    ],
)
def test_the_train_command_decides_an_unset_dropout_and_embedding_size(overrides, dropout, emb_dim, why):
    cfg = compose_config(overrides)
    model, decided_by = model_for_budget(cfg.model, cfg.train)
    assert (model.dropout, model.emb_dim, decided_by["dropout"]) == (dropout, emb_dim, why)
    assert decided_by["emb_dim"] == why.replace("dropout", "emb_dim").removesuffix(NOT_TIMED)
    # a resumed run keeps what it was built with, whatever the budget says now; set otherwise here: refused
    resumed = {"dropout": 0.25, "emb_dim": 64}
    if any(o.startswith("model.dropout") for o in overrides):
        with pytest.raises(ConfigError, match="the run being resumed was built with"):
            model_for_budget(cfg.model, cfg.train, resumed=resumed)
        return
    model, decided_by = model_for_budget(cfg.model, cfg.train, resumed=resumed)
    assert (model.dropout, model.emb_dim, decided_by["emb_dim"]) == (0.25, 64, "the resumed run's")


@pytest.mark.parametrize(("expected", "dropout"), [(4500, 0.5), (6999, 0.5), (7000, 0.6), (10_000, 0.6)])
def test_a_dropout_table_by_updates_takes_the_updates_the_run_is_expected_to_make(expected, dropout):
    cfg = compose_config(["train.max_time=60"])
    asked = []

    def updates(model: ModelConfig) -> tuple[float, str]:  # the train command times a step here
        asked.append(model)
        return expected, "a fake step time"

    model, decided_by = model_for_budget(cfg.model, cfg.train, updates=updates)
    assert model.dropout == dropout and model.emb_dim == 512
    assert decided_by["dropout"] == (
        f"train.dropout_by_budget for a 60-minute budget and about {expected:,} updates (a fake step time)"
    )
    # the step is timed on the model the run trains: its embedding size decided, the dropout of the most updates
    assert [(m.emb_dim, m.dropout) for m in asked] == [(512, 0.6)]
    # a budget whose entry is one number, a dropout set, or a resumed run: nothing to time
    for overrides, resumed in ((["train.max_time=35"], None), (["train.max_time=60", "model.dropout=0.3"], None),
                               (["train.max_time=60"], {"dropout": 0.25, "emb_dim": 512})):  # fmt: skip
        cfg = compose_config(overrides)
        model_for_budget(cfg.model, cfg.train, resumed=resumed, updates=updates)
    assert len(asked) == 1


def test_the_updates_a_run_is_expected_to_make_come_from_its_budgets_and_the_timed_step():
    hour = compose_config(["train.max_time=60"]).train
    assert expected_updates(hour, 0.5) == pytest.approx(3600 * PACE / 0.5)
    assert expected_updates(hour, 1.0) == pytest.approx(expected_updates(hour, 0.5) / 2)  # twice as slow: half
    assert expected_updates(replace(hour, max_steps=100), 0.5) == 100  # the fewer of the two budgets
    assert expected_updates(replace(hour, max_steps=10**9), 0.5) == expected_updates(hour, 0.5)
    assert expected_updates(replace(hour, max_time=None, max_steps=300), 0.5) == 300
    assert expected_updates(replace(hour, max_time=None), 0.5) == math.inf  # no budget: the most updates


def test_a_resumption_is_not_refused_for_an_unset_or_budget_decided_setting_but_is_for_a_contrary_one():
    made = run_identity(compose_config(["train.max_time=60"]))
    # a run made before a default changed: its identity recorded the embedding size and the tables
    older = {**made, "model.emb_dim": 256, "train.dropout_by_budget.45": 0.4}
    assert "model.emb_dim" not in made and "model.dropout" not in made
    assert not any(k.startswith(("train.dropout_by_budget", "train.emb_dim_by_budget")) for k in made)
    assert _changed(older, made) == []
    assert _changed(older, {**made, "model.emb_dim": 512}) == ["model.emb_dim"]
    assert _changed(older, {**made, "train.lr": 1.0}) == ["train.lr"]
    cfg = compose_config(["train.max_time=60", "model.emb_dim=512"])
    with pytest.raises(ConfigError, match=r"model.emb_dim=512, but the run being resumed was built with 256"):
        model_for_budget(cfg.model, cfg.train, resumed={"emb_dim": 256, "dropout": 0.4})
    same = model_for_budget(cfg.model, cfg.train, resumed={"emb_dim": 512, "dropout": 0.4})[0]
    assert (same.emb_dim, same.dropout) == (512, 0.4)


def test_overlays_change_what_they_pin():
    cfg = compose_config(["experiment=multi30k_de_en"])
    assert (cfg.data.src_lang, cfg.data.tgt_lang, cfg.train.max_time) == ("de", "en", 35)
    assert (
        cfg.train.warmup_steps == 400
        and cfg.train.lr == compose_config(["data.src_lang=de", "data.tgt_lang=en"]).train.lr
    )
    assert cfg.run_dir == "runs/multi30k.de-en"
    tiny = compose_config(["debug=tiny"])
    assert tiny.model.enc_hidden < Config().model.enc_hidden and tiny.train.max_steps is not None
    # the study has a step budget and no time limit: it pins the model it was measured with rather than
    # taking the no-time-limit entries of the per-budget tables
    study = compose_config(["experiment=attention_study"])
    assert study.train.max_time is None
    assert model_for_budget(study.model, study.train)[0] == replace(study.model, emb_dim=256, dropout=0.2)


def test_bench_settings_are_not_part_of_a_training_run():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_config(["bench.quick=true"])
    bench = compose_config(["schema=bench", "bench.quick=true"])
    assert isinstance(bench, BenchRunConfig) and bench.bench.quick
    assert not any(k.startswith("bench") for k in run_identity(compose_config([])))


def test_bench_time_to_bleu_runs_are_direction_and_minutes_each_once():
    default = compose_config(["schema=bench"]).bench.time_to_bleu
    assert [time_to_bleu_run(e) for e in default] == [("en", "de", 35), ("de", "en", 35), ("en", "de", 60)]
    chosen = compose_config(["schema=bench", "bench.time_to_bleu=[de-en:7.5]"]).bench.time_to_bleu
    assert [time_to_bleu_run(e) for e in chosen] == [("de", "en", 7.5)]
    assert compose_config(["schema=bench", "bench.time_to_bleu=[]"]).bench.time_to_bleu == []
    for bad, need in [
        ("[en-de]", "SRC-TGT:MINUTES"),
        ("[en-de:0]", "MINUTES > 0"),
        ("[ende:35]", "SRC-TGT:MINUTES"),
        ("[en-de:35,en-de:35.0]", "each run once"),
    ]:
        with pytest.raises(ConfigError, match=f"bench.time_to_bleu=.*{need}"):
            compose_config(["schema=bench", f"bench.time_to_bleu={bad}"])


@pytest.mark.parametrize("override", ["model.hiden=3", "+train.lr_warmup=5", "data.vocab_sise=10"])
def test_misspelled_keys_fail_when_composing(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ConfigError)):
        compose_config([override])


@pytest.mark.parametrize("override", ["train.lr=fast", "model.emb_dim=big", "train.max_steps=1.5"])
def test_ill_typed_values_fail_when_composing(override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_config([override])


CHOICES = {
    "model.attention": list(SCORES),
    "model.decoder": list(VARIANTS),
    "train.schedule": ["cosine", "linear", "rsqrt", "constant", "plateau"],
    "train.precision": ["auto", "bf16", "fp32"],
    "decode.precision": ["auto", "bf16", "fp32"],
    "data.format": ["auto", "hub", "text"],
}


@pytest.mark.parametrize("key", CHOICES)
def test_a_bad_choice_names_the_key_the_value_and_the_allowed_ones(key):
    with pytest.raises(ConfigError) as err:
        compose_config([f"{key}=foo"])
    message = str(err.value)
    assert f"{key}='foo'" in message and all(choice in message for choice in CHOICES[key])


def test_every_allowed_choice_composes():
    for key, choices in CHOICES.items():
        for choice in choices:
            extra = ["model.dec_hidden=1024"] if choice == "dot" else []
            cfg = compose_config([f"{key}={choice}", *extra])
            section, name = key.split(".")
            assert getattr(getattr(cfg, section), name) == choice


NONSENSE = [
    "train.batch_tokens=0", "decode.beam_size=0", "data.max_len=0", "train.max_time=-1", "train.max_time=0",
    "train.max_steps=0", "train.max_epochs=0", "train.valid_every=0", "train.log_every=0", "train.lr=-1",
    "train.lr=nan", "train.lr=inf", "train.threads=-1", "train.clip_norm=-1", "train.label_smoothing=2",
    "train.warmup_steps=-1", "train.patience=-1", "train.valid_beam=0", "train.valid_batch_size=0",
    "model.emb_dim=0", "model.enc_layers=0", "model.dropout=1.5", "data.vocab_size=0", "decode.max_len_a=-1",
    "decode.batch_size=0", "device=tpu", "model.attention=multihead model.heads=3",
    "model.attention=dot", "data.tgt_lang=en",
]  # fmt: skip


@pytest.mark.parametrize("overrides", NONSENSE)
def test_nonsense_values_are_refused_with_the_key_named(overrides):
    overrides = overrides.split()
    with pytest.raises(ConfigError) as err:
        compose_config(overrides)
    key = overrides[-1].split("=")[0].split(".")[-1]
    assert key in str(err.value)


def test_a_stored_model_config_is_checked_too():
    with pytest.raises(ConfigError, match="model.attention='luong'"):
        ModelConfig(attention="luong")


def test_the_command_line_refuses_a_bad_choice_before_reading_any_corpus(tmp_path):
    start = time.monotonic()
    result = run_cli("train", "model.attention=foo", "data=text", "data.path=no/such/corpus", cwd=tmp_path, timeout=60)
    seconds = time.monotonic() - start
    err = result.stderr.decode()
    assert result.returncode != 0
    assert "model.attention='foo'" in err and "bahdanau" in err and "general" in err
    assert "no/such/corpus" not in err and "Traceback" not in err  # the corpus was never looked at
    assert not (tmp_path / "data").exists()  # nor any SentencePiece model made
    print(f"refused in {seconds:.1f} s")


def test_early_stopping_spends_a_time_budget_whole_unless_patience_is_set():
    from translate.schedule import EarlyStopping

    def validations_until_stop(cfg: TrainConfig, limit: int = 50) -> int | None:
        stopping = EarlyStopping()
        stopping.update(30.0, 250, cfg)  # the best, then nothing better
        for n in range(1, limit + 1):
            stopping.update(29.0, 250 * (n + 1), cfg)
            if stopping.should_stop(cfg):
                return n
        return None

    assert validations_until_stop(TrainConfig()) == 10  # no time budget: 10 stalled validations end the run
    assert validations_until_stop(TrainConfig(max_time=60)) is None  # a time budget runs to its end
    assert validations_until_stop(TrainConfig(max_time=60, patience=4)) == 4  # as set, whatever the budget
    assert validations_until_stop(TrainConfig(patience=0)) is None
    composed = compose_config(["train.max_time=60"]).train
    assert composed.patience is None and composed.stop_after == 0
    with pytest.raises(ConfigError, match="train.patience"):
        TrainConfig(patience=-1)
