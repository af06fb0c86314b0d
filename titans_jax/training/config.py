"""Typed experiment configs: a frozen model config plus data / train / eval settings.

`configs/<name>.py` files define `get_config() -> Config`. Any field can be overridden
from the command line with a dotted path, e.g. `--set train.steps=100` or the shorthand
`--train.steps=100`; the value is parsed against the field's declared type. An unknown
key is an error that names it (and suggests the closest known key).

The model config (`titans_jax.models.TitansConfig`) is owned by the models package; this
module treats it as any frozen dataclass, so its fields are overridable as `model.<field>`.
"""
from __future__ import annotations

import ast
import collections.abc
import dataclasses
import difflib
import importlib.util
import json
import pathlib
import types
import typing
from typing import Any, Sequence

from titans_jax.sharding.mesh import MeshConfig


class ConfigError(ValueError):
  """A config file or override is invalid; the message names the offending key/path."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where training / held-out sequences come from.

  Attributes:
    kind: "text" (byte-level over text files), "tokens" (pre-tokenised .npy/.bin/
      .array_record), "niah" (synthetic needle-in-a-haystack) or "mqar" (synthetic
      multi-query associative recall).
    paths: text: files or directories (empty = the Python standard library's own
      source, found through sysconfig); tokens: .npy / .bin / .array_record files.
    eval_paths: optional explicit held-out files; empty = a deterministic split of
      `paths` (by file for text and ArrayRecord, the tail of the stream for memmaps).
    extensions: file suffixes read from text directories.
    seq_len: tokens per training sequence T (the model sees T inputs, predicts T).
    eval_fraction: share of text files / tokens held out when eval_paths is empty.
    split_seed: seed of the file-level held-out split.
    shuffle_seed: seed of grain's deterministic shuffle.
    token_dtype: element type of raw .bin memmaps and ArrayRecord records.
    separator: token placed between packed documents (text files / records); -1: none.
    niah_task: synthetic needle task: "passkey" (PK), "number" (N) or "word" (W).
    mqar_pairs, mqar_queries: multi-query associative recall sizes.
  """

  kind: str = "text"
  paths: tuple[str, ...] = ()
  eval_paths: tuple[str, ...] = ()
  extensions: tuple[str, ...] = (".py",)
  seq_len: int = 256
  eval_fraction: float = 0.02
  split_seed: int = 0
  shuffle_seed: int = 0
  token_dtype: str = "uint16"
  separator: int = 0
  niah_task: str = "passkey"
  mqar_pairs: int = 16
  mqar_queries: int = 16


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimiser, schedule, precision, logging and checkpoint settings.

  The defaults are the paper's recipe: AdamW, lr 4e-4, weight decay 0.1, linear warmup
  then cosine decay, gradient clipping at 1.0.

  Attributes:
    steps: optimiser updates in the whole run (the cosine schedule's horizon).
    batch_size: global sequences per update (split over processes, then over
      `grad_accum_steps` micro-batches).
    grad_accum_steps: micro-batches accumulated per update (a `lax.scan` in the step).
    lr, min_lr_ratio, warmup_steps: peak lr, floor of the cosine as a fraction of it.
    weight_decay, b1, b2, eps: AdamW.
    grad_clip: global-norm clipping threshold (0 = off).
    compute_dtype: activation dtype ("bfloat16" or "float32"); params stay float32.
    seed: model initialisation seed.
    log_every: steps between progress lines / metric writes.
    eval_every: steps between held-out evaluations during training (0 = only at end).
    eval_batches: held-out batches per evaluation.
    checkpoint_every: steps between checkpoints (the last step is always saved).
    keep_checkpoints: how many recent checkpoints to keep.
    async_checkpoint: write checkpoints in a background thread.
  """

  steps: int = 1000
  batch_size: int = 16
  grad_accum_steps: int = 1
  lr: float = 4e-4
  min_lr_ratio: float = 0.1
  warmup_steps: int = 100
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  grad_clip: float = 1.0
  compute_dtype: str = "bfloat16"
  seed: int = 0
  log_every: int = 10
  eval_every: int = 0
  eval_batches: int = 8
  checkpoint_every: int = 200
  keep_checkpoints: int = 3
  async_checkpoint: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What `eval.py` measures.

  Attributes:
    batches: held-out batches for perplexity / bits-per-byte (0 = the whole split).
    batch_size: sequences per evaluation batch.
    niah_task: needle task of the S-NIAH grid ("passkey", "number", "word").
    niah_lengths: context lengths (tokens) of the grid.
    niah_depths: needle depths (fraction of the haystack) of the grid.
    niah_samples: examples per grid cell.
    prompt: prompt for greedy samples ("" = no samples).
    sample_tokens: tokens generated per sample.
  """

  batches: int = 16
  batch_size: int = 8
  niah_task: str = "passkey"
  niah_lengths: tuple[int, ...] = (256, 512, 1024)
  niah_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
  niah_samples: int = 8
  prompt: str = "def "
  sample_tokens: int = 128


@dataclasses.dataclass(frozen=True)
class Config:
  """One experiment: model preset + data + training + evaluation + device mesh."""

  name: str
  model: Any  # titans_jax.models.TitansConfig (frozen dataclass)
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  eval: EvalConfig = EvalConfig()
  mesh: MeshConfig = MeshConfig()  # titans_jax.sharding: (data, fsdp, tensor) sizes


# ----------------------------------------------------------------------------- loading


def load_config(path: str | pathlib.Path) -> Config:
  """Imports a `configs/<name>.py` file and returns its `get_config()`."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location(f"_titans_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} has no get_config() function")
  cfg = module.get_config()
  if not isinstance(cfg, Config):
    raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, not Config")
  return cfg


def _field_types(obj: Any) -> dict[str, Any]:
  cls = type(obj)
  try:
    return typing.get_type_hints(cls)
  except Exception:  # unresolvable forward references: fall back to the current values
    return {f.name: type(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _parse_value(text: str, typ: Any, current: Any, key: str) -> Any:
  """Parses `text` as a value of type `typ` (falls back on the current value's type)."""
  origin = typing.get_origin(typ)
  args = typing.get_args(typ)
  if origin in (typing.Union, types.UnionType):
    non_none = [a for a in args if a is not type(None)]
    if text.strip().lower() in ("none", "null"):
      if type(None) in args:
        return None
      raise ConfigError(f"{key}: None is not allowed")
    if len(non_none) == 1:
      return _parse_value(text, non_none[0], current, key)
    typ = Any
  if typ is Any or typ is None:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  if typ is bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
      return True
    if low in ("0", "false", "no", "off"):
      return False
    raise ConfigError(f"{key}: expected a boolean, got {text!r}")
  if typ is int:
    try:
      return int(text)
    except ValueError:
      try:
        val = float(text)  # accept 1e3
      except ValueError:
        raise ConfigError(f"{key}: expected an integer, got {text!r}") from None
      if not val.is_integer():
        raise ConfigError(f"{key}: expected an integer, got {text!r}")
      return int(val)
  if typ is float:
    try:
      return float(text)
    except ValueError:
      raise ConfigError(f"{key}: expected a number, got {text!r}") from None
  if typ is str:
    return text
  if origin in (tuple, list, collections.abc.Sequence):
    elem = args[0] if args else Any
    stripped = text.strip()
    if stripped.startswith(("(", "[")):
      try:
        items = ast.literal_eval(stripped)
      except (ValueError, SyntaxError):
        raise ConfigError(f"{key}: cannot parse {text!r} as a list") from None
      items = [str(i) if elem is not Any else repr(i) for i in items]
    else:
      items = [s for s in stripped.split(",") if s.strip()] if stripped else []
    parsed = tuple(_parse_value(s.strip(), elem, None, key) for s in items)
    return parsed if origin is not list else list(parsed)
  if typing.get_origin(typ) is typing.Literal:
    if text not in args:
      raise ConfigError(f"{key}: expected one of {args}, got {text!r}")
    return text
  if isinstance(typ, type) and current is not None and isinstance(current, typ):
    try:
      return typ(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError):
      return typ(text)
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _known_keys(obj: Any, prefix: str = "") -> list[str]:
  keys = []
  for f in dataclasses.fields(obj):
    val = getattr(obj, f.name)
    keys.append(prefix + f.name)
    if dataclasses.is_dataclass(val) and not isinstance(val, type):
      keys.extend(_known_keys(val, prefix + f.name + "."))
  return keys


def override(cfg: Config, key: str, text: str) -> Config:
  """Returns `cfg` with the dotted field `key` set to `text` parsed against its type."""
  parts = key.split(".")

  def set_in(obj: Any, parts: Sequence[str], path: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    name = parts[0]
    here = f"{path}.{name}" if path else name
    if name not in names:
      candidates = _known_keys(cfg)
      close = difflib.get_close_matches(key, candidates, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(f"unknown config key {key!r}{hint}")
    current = getattr(obj, name)
    if len(parts) > 1:
      if not dataclasses.is_dataclass(current):
        raise ConfigError(f"unknown config key {key!r}: {here} is not a section")
      return dataclasses.replace(obj, **{name: set_in(current, parts[1:], here)})
    if dataclasses.is_dataclass(current) and not isinstance(current, type):
      raise ConfigError(f"{key!r} is a section; set one of its fields, e.g. {key}.<field>")
    value = _parse_value(text, _field_types(obj).get(name, Any), current, key)
    try:
      return dataclasses.replace(obj, **{name: value})
    except (TypeError, ValueError) as e:  # the model config validates in __post_init__
      raise ConfigError(f"{key}={text!r} is invalid: {e}") from e

  return set_in(cfg, parts, "")


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
  """Applies `key=value` strings in order."""
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"override {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    cfg = override(cfg, key.strip(), value)
  return cfg


def to_dict(obj: Any) -> Any:
  """A JSON-friendly nested dict of a config (tuples become lists)."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
  if isinstance(obj, (tuple, list)):
    return [to_dict(v) for v in obj]
  if isinstance(obj, dict):
    return {str(k): to_dict(v) for k, v in obj.items()}
  if isinstance(obj, (str, int, float, bool)) or obj is None:
    return obj
  return repr(obj)


def to_json(cfg: Config) -> str:
  return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def diff_dicts(a: Any, b: Any, prefix: str = "") -> list[str]:
  """Dotted keys whose values differ between two nested dicts."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      key = f"{prefix}.{k}" if prefix else k
      if k not in a or k not in b:
        out.append(key)
      else:
        out.extend(diff_dicts(a[k], b[k], key))
    return out
  return [] if a == b else [prefix]


def validate(cfg: Config) -> None:
  """Checks cross-field constraints; raises ConfigError naming the field."""
  d, t, e = cfg.data, cfg.train, cfg.eval
  if d.kind not in ("text", "tokens", "niah", "mqar"):
    raise ConfigError(f"data.kind={d.kind!r}: expected text, tokens, niah or mqar")
  if d.niah_task not in ("passkey", "number", "word"):
    raise ConfigError(f"data.niah_task={d.niah_task!r}: expected passkey, number or word")
  if e.niah_task not in ("passkey", "number", "word"):
    raise ConfigError(f"eval.niah_task={e.niah_task!r}: expected passkey, number or word")
  if d.seq_len < 2:
    raise ConfigError(f"data.seq_len={d.seq_len} must be >= 2")
  if not 0.0 <= d.eval_fraction < 1.0:
    raise ConfigError(f"data.eval_fraction={d.eval_fraction} must be in [0, 1)")
  if t.steps < 1:
    raise ConfigError(f"train.steps={t.steps} must be >= 1")
  if t.grad_accum_steps < 1 or t.batch_size % t.grad_accum_steps:
    raise ConfigError(
        f"train.batch_size={t.batch_size} must be a multiple of "
        f"train.grad_accum_steps={t.grad_accum_steps}")
  if t.compute_dtype not in ("bfloat16", "float32"):
    raise ConfigError(f"train.compute_dtype={t.compute_dtype!r}: expected bfloat16 or float32")
  if t.warmup_steps < 0:
    raise ConfigError(f"train.warmup_steps={t.warmup_steps} must be >= 0")
  if t.keep_checkpoints < 1:
    raise ConfigError(f"train.keep_checkpoints={t.keep_checkpoints} must be >= 1")
  for depth in e.niah_depths:
    if not 0.0 <= depth <= 1.0:
      raise ConfigError(f"eval.niah_depths contains {depth}, not in [0, 1]")
  m = cfg.mesh
  for axis, size in (("data", m.data), ("fsdp", m.fsdp), ("tensor", m.tensor)):
    if size == 0 or size < -1:
      raise ConfigError(f"mesh.{axis}={size} must be a positive size or -1 (fill)")
  if [m.data, m.fsdp, m.tensor].count(-1) > 1:
    raise ConfigError(f"mesh: at most one of data/fsdp/tensor may be -1, got "
                      f"({m.data}, {m.fsdp}, {m.tensor})")
  if m.memory_heads not in ("tensor", "replicated"):
    raise ConfigError(f"mesh.memory_heads={m.memory_heads!r}: expected tensor or replicated")
  vocab = getattr(cfg.model, "vocab_size", None)
  if vocab is not None and d.kind in ("text", "niah") and vocab < 256:
    raise ConfigError(f"model.vocab_size={vocab} < 256 cannot hold byte-level data")


def from_dict(cls: Any, data: Any) -> Any:
  """Rebuilds a (nested) config dataclass from `to_dict` output (e.g. a checkpoint's)."""
  if not (dataclasses.is_dataclass(cls) and isinstance(data, dict)):
    return data
  hints = typing.get_type_hints(cls)
  kwargs = {}
  names = {f.name for f in dataclasses.fields(cls)}
  for k, v in data.items():
    if k not in names:
      raise ConfigError(f"saved config has unknown key {cls.__name__}.{k}")
    kwargs[k] = _from_typed(hints.get(k, Any), v)
  return cls(**kwargs)


def _from_typed(typ: Any, v: Any) -> Any:
  if v is None:
    return None
  origin, args = typing.get_origin(typ), typing.get_args(typ)
  if origin in (typing.Union, types.UnionType):
    for a in args:
      if a is type(None):
        continue
      if dataclasses.is_dataclass(a) and isinstance(v, dict):
        return from_dict(a, v)
      if typing.get_origin(a) is tuple and isinstance(v, list):
        return _from_typed(a, v)
    return tuple(v) if isinstance(v, list) else v
  if dataclasses.is_dataclass(typ) and isinstance(v, dict):
    return from_dict(typ, v)
  if origin is tuple and isinstance(v, list):
    elem = args[0] if args else Any
    return tuple(_from_typed(elem, x) for x in v)
  if isinstance(v, list):
    return tuple(v)
  return v


def config_from_dict(data: dict) -> Config:
  """The Config saved with a checkpoint (model: titans_jax.models.TitansConfig)."""
  from titans_jax.models import TitansConfig

  data = dict(data)
  model = from_dict(TitansConfig, data.pop("model"))
  return Config(name=data.get("name", "restored"), model=model,
                data=from_dict(DataConfig, data.get("data", {})),
                train=from_dict(TrainConfig, data.get("train", {})),
                eval=from_dict(EvalConfig, data.get("eval", {})),
                mesh=from_dict(MeshConfig, data.get("mesh", {})))
