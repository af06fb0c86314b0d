"""Every configs/*.py parses, validates and builds abstractly; overrides are typed."""
import pathlib

import jax
import numpy as np
import pytest

from titans_jax.runtime import build
from titans_jax.training import cli, config as config_lib

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


def test_there_are_configs():
  names = {p.stem for p in CONFIGS}
  assert {"default", "tiny", "paper_340m"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_builds_abstractly(path):
  cfg = config_lib.load_config(path)
  config_lib.validate(cfg)
  assert cfg.train.lr > 0 and cfg.model.vocab_size >= 256
  graphdef, state = build.abstract_train_state(cfg)  # no parameter is allocated
  leaves = jax.tree.leaves(state.params)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  n = sum(int(np.prod(x.shape)) for x in leaves)
  assert n > 1000
  # the saved-config round trip eval.py relies on
  assert config_lib.config_from_dict(config_lib.to_dict(cfg)) == cfg


def test_paper_presets_have_the_paper_recipe():
  cfg = config_lib.load_config(next(p for p in CONFIGS if p.stem == "paper_340m"))
  t = cfg.train
  assert (t.lr, t.weight_decay, t.grad_clip) == (4e-4, 0.1, 1.0)
  assert t.batch_size * cfg.data.seq_len == 128 * 4096
  assert cfg.model.dtype == "bfloat16"


def test_typed_overrides():
  cfg = config_lib.load_config(CONFIGS[0])
  cfg = config_lib.apply_overrides(cfg, [
      "train.steps=1e3", "train.lr=3e-4", "train.async_checkpoint=false",
      "data.paths=a,b", "eval.niah_depths=(0, 0.5)", "model.window=32", "name=x"])
  assert cfg.train.steps == 1000 and isinstance(cfg.train.steps, int)
  assert cfg.train.lr == 3e-4 and cfg.train.async_checkpoint is False
  assert cfg.data.paths == ("a", "b") and cfg.eval.niah_depths == (0.0, 0.5)
  assert cfg.model.window == 32 and cfg.name == "x"
  assert config_lib.apply_overrides(cfg, ["data.paths="]).data.paths == ()


@pytest.mark.parametrize("item,match", [
    ("train.stepz=3", r"unknown config key 'train.stepz' \(did you mean 'train.steps'\?\)"),
    ("nope.x=1", "unknown config key 'nope.x'"),
    ("train=3", "'train' is a section"),
    ("train.steps=ten", "train.steps: expected an integer"),
    ("train.async_checkpoint=maybe", "expected a boolean"),
    ("model.dim=65", "model.dim='65' is invalid"),
    ("train.steps", "not of the form key=value"),
])
def test_bad_overrides_are_named(item, match):
  cfg = config_lib.load_config(CONFIGS[0])
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.apply_overrides(cfg, [item])


@pytest.mark.parametrize("item,match", [
    ("data.kind=video", "data.kind='video'"),
    ("train.grad_accum_steps=3", "multiple of train.grad_accum_steps=3"),
    ("eval.niah_depths=0.5,1.5", "1.5, not in"),
])
def test_validation_names_the_field(item, match):
  cfg = config_lib.apply_overrides(config_lib.load_config(CONFIGS[0]), [item])
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(cfg)


def test_cli_shorthand_and_unknown_key(capsys):
  parser = cli.build_parser("t")
  args, cfg = cli.parse(parser, ["--config", str(CONFIGS[0]), "--train.steps=5",
                                 "--set", "train.lr=0.01", "--data.seq_len", "64"])
  assert (cfg.train.steps, cfg.train.lr, cfg.data.seq_len) == (5, 0.01, 64)
  assert args.workdir.endswith(cfg.name)
  with pytest.raises(SystemExit) as e:
    cli.parse(cli.build_parser("t"), ["--config", str(CONFIGS[0]), "--train.stpes=5"])
  assert e.value.code == 2
  assert "unknown config key 'train.stpes'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.parse(cli.build_parser("t"), ["--config", "configs/does_not_exist.py"])
  assert "config file not found" in capsys.readouterr().err
