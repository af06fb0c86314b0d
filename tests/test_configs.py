"""Every configs/*.py parses, validates and builds abstractly; overrides are typed."""

import json
import pathlib
import re
import sys

import jax
import numpy as np
import pytest

from titans_jax import cli
from titans_jax import config as config_lib
from titans_jax.runtime import build

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.py"))
CONFIG_TINY = next(p for p in CONFIGS if p.stem == "tiny")


def test_there_are_configs():
  names = {p.stem for p in CONFIGS}
  assert {"default", "tiny", "paper_340m"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_builds_abstractly(path):
  cfg = config_lib.load_config(path)
  config_lib.validate(cfg)
  assert cfg.train.lr > 0
  assert cfg.model.vocab_size >= 256 or cfg.data.kind in ("tokens", "mqar")  # bytes need 256
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
  cfg = config_lib.apply_overrides(
    cfg,
    [
      "train.steps=1e3",
      "train.lr=3e-4",
      "train.async_checkpoint=false",
      "data.paths=a,b",
      "eval.niah_depths=(0, 0.5)",
      "model.window=32",
      "name=x",
    ],
  )
  assert cfg.train.steps == 1000 and isinstance(cfg.train.steps, int)
  assert cfg.train.lr == 3e-4 and cfg.train.async_checkpoint is False
  assert cfg.data.paths == ("a", "b") and cfg.eval.niah_depths == (0.0, 0.5)
  assert cfg.model.window == 32 and cfg.name == "x"
  assert config_lib.apply_overrides(cfg, ["data.paths="]).data.paths == ()


@pytest.mark.parametrize(
  "item,match",
  [
    ("train.stepz=3", r"unknown config key 'train.stepz' \(did you mean 'train.steps'\?\)"),
    ("nope.x=1", "unknown config key 'nope.x'"),
    ("train=3", "'train' is a section"),
    ("train.steps=ten", "train.steps: expected an integer"),
    ("train.async_checkpoint=maybe", "expected a boolean"),
    ("model.dim=65", "model.dim='65' is invalid"),
    ("train.steps", "not of the form key=value"),
  ],
)
def test_bad_overrides_are_named(item, match):
  cfg = config_lib.load_config(CONFIGS[0])
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.apply_overrides(cfg, [item])


@pytest.mark.parametrize(
  "item,match",
  [
    ("data.kind=video", "data.kind='video'"),
    ("train.grad_accum_steps=3", "multiple of train.grad_accum_steps=3"),
    ("eval.niah_depths=0.5,1.5", "1.5, not in"),
  ],
)
def test_validation_names_the_field(item, match):
  cfg = config_lib.apply_overrides(config_lib.load_config(CONFIGS[0]), [item])
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(cfg)


def test_cli_shorthand_and_unknown_key(capsys):
  parser = cli.build_parser("t")
  args, cfg = cli.parse(
    parser,
    [
      "--config",
      str(CONFIGS[0]),
      "--train.steps=5",
      "--set",
      "train.lr=0.01",
      "--data.seq_len",
      "64",
    ],
  )
  assert (cfg.train.steps, cfg.train.lr, cfg.data.seq_len) == (5, 0.01, 64)
  assert args.workdir.endswith(cfg.name)
  with pytest.raises(SystemExit) as e:
    cli.parse(cli.build_parser("t"), ["--config", str(CONFIGS[0]), "--train.stpes=5"])
  assert e.value.code == 2
  assert "unknown config key 'train.stpes'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.parse(cli.build_parser("t"), ["--config", "configs/does_not_exist.py"])
  assert "config file not found" in capsys.readouterr().err


# ------------------------------------------------- every field reachable, documented, read


def _leaf_keys(cls=config_lib.Config, prefix=""):
  """Dotted keys of every leaf field of the config tree, model.memory.* included."""
  keys = []
  for name, typ in config_lib.field_types(cls).items():
    struct = config_lib._struct(typ)
    if struct is None:
      keys.append(prefix + name)
    else:
      keys.extend(_leaf_keys(struct, f"{prefix}{name}."))
  return keys


def test_help_lists_every_field_with_type_default_and_meaning(capsys):
  with pytest.raises(SystemExit) as e:
    cli.parse(cli.build_parser("t"), ["--config", str(CONFIG_TINY), "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  keys = _leaf_keys()
  assert "model.memory.commit_every" in keys and len(keys) > 90
  for key in keys:
    assert f"--{key} " in out, key
  block = out[out.index("--model.memory.commit_every ") :]
  block = block[: block.index("--model.memory.depth ")]
  assert "INT" in block and "(default: 8)" in block and "commit block" in block
  # every field has a line of meaning (tyro prints "(default: …)" alone otherwise)
  lines = [l.strip() for l in out.splitlines()]
  for i, line in enumerate(lines):
    if line.startswith("--") and "." in line.split()[0]:
      assert not lines[i + 1].startswith("(default:"), f"{line}: no description"


def test_memory_override_resolves_from_the_model():
  cfg = config_lib.load_config(CONFIG_TINY)
  assert cfg.model.memory is None  # derived from the model's fields
  out = config_lib.apply_overrides(
    cfg, ["model.memory.commit_every=16", "model.dim=64", "model.memory_chunk=4"]
  )
  mem = out.model.memory
  assert (mem.commit_every, mem.dim, mem.chunk_size) == (16, 64, 4)
  assert mem.qkv_conv == cfg.model.memory_config.qkv_conv  # the rest resolved as before
  assert out.model.memory_heads is None and out.model.memory_chunk is None  # folded in
  assert config_lib.config_from_dict(config_lib.to_dict(out)) == out
  # a resumed run that spells out the memory it already had is the same model
  same = config_lib.apply_overrides(cfg, ["model.memory.commit_every=8"]).model  # = derived
  assert same.memory is not None
  assert config_lib.comparable_model_dict(
    config_lib.to_dict(cfg.model)
  ) == config_lib.comparable_model_dict(same)
  # untouched memory stays derived, so model.dim and the memory cannot disagree
  assert config_lib.apply_overrides(cfg, ["model.dim=64"]).model.memory_config.dim == 64
  # a shortcut next to an explicit memory is an error, not ignored
  with pytest.raises(config_lib.ConfigError, match="memory_heads=2 disagrees"):
    config_lib.apply_overrides(out, ["model.memory_heads=2"])
  with pytest.raises(config_lib.ConfigError, match="model.memory_heads=2 disagrees"):
    config_lib.apply_overrides(cfg, ["model.memory_heads=2", "model.memory.heads=1"])
  with pytest.raises(ValueError, match="memory.dim=32 != dim=64"):
    cfg.model.replace(dim=64, heads=2, memory=cfg.model.memory_config)


def _read_attributes():
  """Attribute names read anywhere in the package and the scripts, outside the configs'
  own validation (`__post_init__`, `validate`) — a field read only there is dead."""
  import ast

  root = pathlib.Path(__file__).resolve().parents[1]
  files = [*(root / "titans_jax").rglob("*.py"), root / "train.py", root / "eval.py"]
  names = set()

  def visit(node, skip):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in (
      "__post_init__",
      "validate",
    ):
      skip = True
    if not skip:
      if isinstance(node, ast.Attribute):
        names.add(node.attr)
      if (
        isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "getattr"
        and len(node.args) > 1
        and isinstance(node.args[1], ast.Constant)
      ):
        names.add(node.args[1].value)
    for child in ast.iter_child_nodes(node):
      visit(child, skip)

  for f in files:
    visit(ast.parse(f.read_text()), False)
  return names


def test_every_config_field_is_read_somewhere():
  read = _read_attributes()
  dead = [k for k in _leaf_keys() if k.rsplit(".", 1)[-1] not in read]
  assert not dead, f"config fields nothing reads: {dead}"
  assert "compute_dtype" not in _leaf_keys()


# ---------------------------------------------------- every field validated, named (#17)

# Fields whose 0 / -1 is meaningful (documented in their Attributes); every other numeric
# field must reject it with an error naming the field.
ZERO_OK = {
  "data.eval_fraction",
  "data.split_seed",
  "data.shuffle_seed",
  "data.separator",
  "train.min_lr_ratio",
  "train.warmup_steps",
  "train.weight_decay",
  "train.b1",
  "train.b2",
  "train.grad_clip",
  "train.seed",
  "train.eval_every",
  "eval.batches",
  "eval.niah_depths",
  "eval.sample_tokens",
  "model.num_persistent",
  "model.memory_layers",
  "model.memory.qkv_conv",
  "model.memory.init_lr_bias",
  "model.memory.init_momentum_bias",
  "model.memory.init_decay_bias",
}
NEGATIVE_OK = {
  "data.separator",
  "mesh.data",
  "mesh.fsdp",
  "mesh.tensor",
  "model.memory.init_lr_bias",
  "model.memory.init_momentum_bias",
  "model.memory.init_decay_bias",
}


def _numeric(typ):
  import typing

  return any(
    a in (int, float)
    for a in (
      typ,
      *typing.get_args(typ),
      *[b for a in typing.get_args(typ) for b in typing.get_args(a)],
    )
  )


def _with(cfg, key, value):
  """`cfg` with one field set, as the Python API would (no CLI parsing)."""
  import dataclasses

  parts = key.split(".")
  if parts[:2] == ["model", "memory"]:
    mem = dataclasses.replace(cfg.model.memory_config, **{parts[2]: value})
    return dataclasses.replace(
      cfg, model=cfg.model.replace(memory=mem, memory_heads=None, memory_chunk=None)
    )
  if parts[0] == "model":
    return dataclasses.replace(cfg, model=cfg.model.replace(**{parts[1]: value}))
  section = getattr(cfg, parts[0])
  return dataclasses.replace(cfg, **{parts[0]: dataclasses.replace(section, **{parts[1]: value})})


def test_every_numeric_field_rejects_zero_negative_and_wrong_type_by_name():
  cfg = config_lib.apply_overrides(config_lib.load_config(CONFIG_TINY), ["mesh.data=1"])
  numeric = [k for k in _leaf_keys() if _numeric(config_lib.field_type(k))]
  assert {"train.checkpoint_every", "train.log_every", "model.memory.max_lr"} <= set(numeric)
  for key in numeric:
    typ = config_lib.field_type(key)
    is_tuple = "tuple" in str(typ)
    for value, ok in ((0, key in ZERO_OK), (-1, key in NEGATIVE_OK), ("x", False)):
      value = (value,) if is_tuple and value != "x" else value
      name = key.rsplit(".", 1)[-1] if key.startswith("model.") else key
      try:
        config_lib.validate(_with(cfg, key, value))
      except (config_lib.ConfigError, ValueError) as e:
        assert not ok, f"{key}={value!r} is documented as valid but rejected: {e}"
        assert name in str(e) and "\n" not in str(e), (key, value, str(e))
      else:
        assert ok, f"{key}={value!r} was accepted"


@pytest.mark.parametrize(
  "item,match",
  [
    ("train.checkpoint_every=0", "train.checkpoint_every=0, not >= 1"),
    ("train.log_every=0", "train.log_every=0, not >= 1"),
    ("train.batch_size=0", "train.batch_size=0, not >= 1"),
    ("train.lr=-1", r"train.lr=-1.0, not > 0"),
    ("mesh.fsdp=-1", "mesh.data=-1, mesh.fsdp=-1: at most one"),
    ("data.seq_len=32", "data.seq_len: NIAH length 32 is shorter"),
  ],
)
def test_cli_rejects_bad_values_before_anything_runs(item, match, capsys, tmp_path):
  with pytest.raises(SystemExit) as e:
    cli.parse(
      cli.build_parser("t"),
      ["--config", str(CONFIG_TINY), "--set", item, "--workdir", str(tmp_path / "run")],
    )
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert re.search(match, err) and err.count("\n") == 1, err
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_memory_field_from_the_command_line_trains(tmp_path):
  """`--set model.memory.commit_every=…` reaches the trained model (issue 16's check)."""
  sys.path.insert(0, str(ROOT))
  import train as train_cli

  workdir = tmp_path / "run"
  rc = train_cli.main(
    [
      "--config",
      str(CONFIG_TINY),
      "--workdir",
      str(workdir),
      "--set",
      "model.memory.commit_every=16",
      "--model.num_layers=1",
      "--data.kind=mqar",
      "--data.seq_len=32",
      "--data.mqar_pairs=4",
      "--data.mqar_queries=4",
      "--train.steps=2",
      "--train.batch_size=2",
      "--train.log_every=1",
      "--train.checkpoint_every=2",
      "--train.async_checkpoint=false",
      "--train.eval_batches=1",
      "--eval.batch_size=2",
    ]
  )
  assert rc == 0
  saved = config_lib.config_from_dict(json.loads((workdir / "config.json").read_text()))
  assert saved.model.memory.commit_every == 16 and saved.model.memory_config.chunk_size == 8
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) >= 2 and all(np.isfinite(losses))


def test_prefer_cpu_without_accelerator(tmp_path):
  """No accelerator device file: JAX is pinned to the CPU (libtpu stays quiet); a TPU or
  GPU device file, or an explicit platform choice, leaves it alone."""
  saved = jax.config.jax_platforms
  try:
    jax.config.update("jax_platforms", None)
    (tmp_path / "accel0").touch()
    assert not cli.prefer_cpu_without_accelerator(tmp_path)
    assert jax.config.jax_platforms is None
    (tmp_path / "accel0").unlink()
    (tmp_path / "nvidia0").touch()
    assert not cli.prefer_cpu_without_accelerator(tmp_path)
    (tmp_path / "nvidia0").unlink()
    (tmp_path / "vfio").mkdir()
    (tmp_path / "vfio" / "0").touch()  # a vfio group: a v5p-style TPU
    assert not cli.prefer_cpu_without_accelerator(tmp_path)
    (tmp_path / "vfio" / "0").unlink()
    (tmp_path / "vfio" / "vfio").touch()  # the control node alone is no accelerator
    assert cli.prefer_cpu_without_accelerator(tmp_path)
    assert jax.config.jax_platforms == "cpu"
    assert not cli.prefer_cpu_without_accelerator(tmp_path)  # now explicit: unchanged
  finally:
    jax.config.update("jax_platforms", saved)


def test_host_device_files_tell_tpu_from_gpu(tmp_path):
  from titans_jax.sharding import hosts

  assert not hosts.accelerator_attached(tmp_path) and not hosts.tpu_attached(tmp_path)
  (tmp_path / "kfd").touch()
  assert hosts.accelerator_attached(tmp_path) and not hosts.tpu_attached(tmp_path)
  (tmp_path / "kfd").unlink()
  (tmp_path / "vfio").mkdir()
  (tmp_path / "vfio" / "vfio").touch()
  assert not hosts.tpu_attached(tmp_path)
  (tmp_path / "vfio" / "12").touch()
  assert hosts.tpu_attached(tmp_path) and hosts.accelerator_attached(tmp_path)
