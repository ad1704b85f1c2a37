"""Every YAML in conf/ composes into the typed dataclasses; bad keys fail at compose time."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from translate.cli import CONF_DIR
from translate.config import Config, ConfigError, register_configs, to_config

GROUPS = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((Path(CONF_DIR) / g).glob("*.yaml"))]


def compose_config(overrides: list[str]) -> Config:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return to_config(cfg)


def test_every_group_has_options():
    assert {"data", "model", "train", "decode", "experiment", "debug"} <= set(GROUPS)
    assert len(OPTIONS) >= 8


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_yaml_composes_into_the_dataclasses(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "text"):
        overrides.append("data.path=somewhere")
    cfg = compose_config(overrides)
    assert isinstance(cfg, Config)
    assert cfg.run_dir.startswith("runs/")


def test_defaults_are_the_documented_pipeline():
    cfg = compose_config([])
    assert (cfg.data.hub_id, cfg.data.src_lang, cfg.data.tgt_lang) == ("bentrevett/multi30k", "en", "de")
    assert cfg.run_dir == "runs/multi30k.en-de"
    assert cfg.decode.beam_size == 5


def test_overlays_change_what_they_pin():
    cfg = compose_config(["experiment=multi30k_de_en"])
    assert (cfg.data.src_lang, cfg.data.tgt_lang, cfg.train.max_time) == ("de", "en", 35)
    assert cfg.train.warmup_steps == 400 and cfg.train.lr == compose_config([]).train.lr
    assert cfg.run_dir == "runs/multi30k.de-en"
    tiny = compose_config(["debug=tiny"])
    assert tiny.model.enc_hidden < 64 and tiny.train.max_steps is not None


@pytest.mark.parametrize("override", ["model.hiden=3", "+train.lr_warmup=5", "data.vocab_sise=10"])
def test_misspelled_keys_fail_when_composing(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ConfigError)):
        compose_config([override])


@pytest.mark.parametrize("override", ["train.lr=fast", "model.emb_dim=big", "train.max_steps=1.5"])
def test_ill_typed_values_fail_when_composing(override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_config([override])
