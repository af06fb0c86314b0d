"""Typed experiment configs: the model config plus data / train / eval / mesh settings.

`configs/<name>.py` files define `get_config() -> Config`. Every field, `model.memory.*`
included, can be overridden from the command line with its dotted path — `--set
train.steps=100` or the shorthand `--train.steps=100` — and is listed with its type,
default and meaning by `--help`. Parsing, type conversion and the help text are tyro's
(docs/configuration.md says why tyro); this module adds the `key=value` spelling, the
model's memory resolution (below) and `validate`, the one place where every field's
range is checked before anything is compiled or written.

The model's memory: `TitansConfig.memory=None` means the default memory derived from
the model's fields (`TitansConfig.default_memory`). Overrides of `model.*` are applied
first; `model.memory.*` overrides then start from the memory so resolved (so that
`--model.dim=96 --model.memory.commit_every=32` gives a 96-wide memory) and make it
explicit, with the shortcuts `memory_heads` / `memory_chunk` folded into it.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import importlib.util
import io
import json
import pathlib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

import tyro

from titans_jax.data.synthetic import NIAH_TASKS, example_rng, niah_example
from titans_jax.fieldcheck import check_types, field_types, type_name
from titans_jax.memory.config import MemoryConfig
from titans_jax.models.config import TitansConfig
from titans_jax.sharding.mesh import AXES, MEMORY_HEAD_PLACEMENTS, MeshConfig

DATA_KINDS = ("text", "tokens", "niah", "mqar")
TOKEN_DTYPES = ("uint8", "uint16", "int32", "uint32")


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
    mqar_pairs: key-value pairs per multi-query associative recall example.
    mqar_queries: queries per multi-query associative recall example.
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
  """Optimiser, schedule, logging and checkpoint settings.

  The defaults are the paper's recipe: AdamW, lr 4e-4, weight decay 0.1, linear warmup
  then cosine decay, gradient clipping at 1.0. The compute dtype is the model's
  (`model.dtype`); parameters are `model.param_dtype`.

  Attributes:
    steps: optimiser updates in the whole run (the cosine schedule's horizon).
    batch_size: global sequences per update (split over processes, then over
      `grad_accum_steps` micro-batches).
    grad_accum_steps: micro-batches accumulated per update (a `lax.scan` in the step).
    lr: peak learning rate (> 0).
    min_lr_ratio: floor of the cosine decay as a fraction of lr, in [0, 1].
    warmup_steps: steps of linear warmup from 0 to lr.
    weight_decay: AdamW's decoupled weight decay.
    b1: AdamW's first-moment decay, in [0, 1).
    b2: AdamW's second-moment decay, in [0, 1).
    eps: AdamW's epsilon (> 0).
    grad_clip: global-norm clipping threshold (0 = off).
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
    niah_samples: examples per grid cell (at least 1 when niah_lengths is not empty).
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
  """One experiment: model + data + training + evaluation + device mesh.

  Attributes:
    name: run name (the default workdir is runs/<name>).
    model: the model (titans_jax.models.TitansConfig; its memory under model.memory).
    data: training / held-out data.
    train: optimiser, schedule, logging, checkpoints.
    eval: what eval.py measures.
    mesh: device mesh (data, fsdp, tensor) and memory-head placement.
  """

  name: str
  model: TitansConfig
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  eval: EvalConfig = EvalConfig()
  mesh: MeshConfig = MeshConfig()


SECTIONS = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig, "mesh": MeshConfig}


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


# ------------------------------------------------------------- overrides and --help (tyro)

_TYRO = dict(
  config=(tyro.conf.FlagConversionOff, tyro.conf.AvoidSubcommands),
  use_underscores=True,
  console_outputs=False,
)
_MEMORY = "model.memory."


def _struct(typ: Any) -> Any:
  """The dataclass inside `typ` (Optional[MemoryConfig] -> MemoryConfig), else None."""
  for t in (typ, *typing.get_args(typ)):
    if dataclasses.is_dataclass(t):
      return t
  return None


def _all_keys(cls: Any = Config, prefix: str = "") -> list[str]:
  keys = []
  for name, typ in field_types(cls).items():
    keys.append(prefix + name)
    if _struct(typ) is not None:
      keys.extend(_all_keys(_struct(typ), f"{prefix}{name}."))
  return keys


def field_type(key: str) -> Any:
  """The annotation of a dotted config key; ConfigError (with a suggestion) if unknown."""
  cls, typ = Config, None
  for i, part in enumerate(key.split(".")):
    hints = field_types(cls) if cls is not None else {}
    if part not in hints:
      close = difflib.get_close_matches(key, _all_keys(), n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(f"unknown config key {key!r}{hint}")
    typ, cls = hints[part], _struct(hints[part])
  if cls is not None:
    raise ConfigError(f"{key!r} is a section; set one of its fields, e.g. {key}.<field>")
  return typ


def _tokens(key: str, text: str, typ: Any) -> list[str]:
  """`text` as tyro's argument tokens: lists comma-separated or a (...)/[...] literal,
  booleans also as yes/no/on/off/1/0, integers also as 1e3."""
  args = typing.get_args(typ)
  inner = (
    [a for a in args if a is not type(None)]
    if args and typing.get_origin(typ) in (typing.Union, types.UnionType)
    else [typ]
  )
  base = inner[0] if len(inner) == 1 else typ
  stripped = text.strip()
  if stripped.lower() in ("none", "null") and type(None) in args:
    return ["None"]
  if typing.get_origin(base) is tuple:
    if stripped.startswith(("(", "[")):
      try:
        return [str(v) for v in ast.literal_eval(stripped)]
      except (ValueError, SyntaxError):
        raise ConfigError(f"{key}: cannot parse {text!r} as a list") from None
    return [s.strip() for s in stripped.split(",") if s.strip()]
  if base is bool:
    low = stripped.lower()
    if low in ("1", "true", "yes", "on"):
      return ["True"]
    if low in ("0", "false", "no", "off"):
      return ["False"]
  if base is int:
    with contextlib.suppress(ValueError):
      if float(stripped).is_integer() and not stripped.lstrip("-").isdigit():
        return [str(int(float(stripped)))]
  return [text]


def _tyro_error(captured: str) -> str:
  """The message of tyro's error panel, on one line ("" if it printed none)."""
  lines = [re.sub(r"[│╭╮╰╯|+]", "", l).strip() for l in captured.splitlines()]
  is_rule = lambda l: bool(l) and set(l) <= set("─-━=")  # noqa: E731
  out = []
  for line in lines[1:]:  # lines[0] is the panel's title ("─ Value error ───")
    if out and (is_rule(line) or not line):
      break
    if line and not is_rule(line):
      out.append(line)
  return " ".join(out)


def _tyro_parse(cls: Any, default: Any, argv: list[str]) -> Any:
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      return tyro.cli(cls, default=default, args=argv, **_TYRO)
  except SystemExit:
    raise ConfigError(_tyro_error(err.getvalue())) from None


_ARTICLE = {int: "an integer", float: "a number", bool: "a boolean (true/false)"}


def _parse(cls: Any, default: Any, pairs: list[tuple[str, str, Any]], strip: str) -> Any:
  """tyro parses `pairs` (key, text, type) into `cls` starting from `default`; an error
  names the pair that causes it."""
  argv = []
  for key, text, typ in pairs:
    argv += ["--" + key[len(strip) :], *_tokens(key, text, typ)]
  try:
    return _tyro_parse(cls, default, argv)
  except ConfigError as e:
    for key, text, typ in pairs:  # which pair: the first that fails on its own
      try:
        _tyro_parse(cls, default, ["--" + key[len(strip) :], *_tokens(key, text, typ)])
      except ConfigError as single:
        msg = str(single)
        if not msg or msg.startswith("Error parsing --"):  # a value of the wrong type
          base = next((a for a in (typ, *typing.get_args(typ)) if a in _ARTICLE), None)
          want = _ARTICLE.get(base, type_name(typ))
          raise ConfigError(f"{key}: expected {want}, got {text!r}") from None
        raise ConfigError(f"{key}={text!r} is invalid: {msg.split(': ', 1)[-1]}") from None
    raise ConfigError(f"{' '.join(argv)}: {e}") from None


def _split(item: str) -> tuple[str, str]:
  if "=" not in item:
    raise ConfigError(f"override {item!r} is not of the form key=value")
  key, text = item.split("=", 1)
  return key.strip(), text


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
  """`cfg` with `key=value` overrides applied (later ones win), each parsed against its
  field's type. `model.memory.*` keys start from the memory the model resolves after
  its own overrides (see the module docstring)."""
  pairs = [(k, v, field_type(k)) for k, v in map(_split, overrides)]
  tree = [p for p in pairs if not p[0].startswith(_MEMORY)]
  memory = [p for p in pairs if p[0].startswith(_MEMORY)]
  if tree:
    cfg = _parse(Config, cfg, tree, "")
  if memory:
    model = cfg.model
    resolved = _parse(MemoryConfig, model.memory_config, memory, _MEMORY)
    given = {k.split(".")[1] for k, _, _ in tree}
    for short, field in (("memory_heads", "heads"), ("memory_chunk", "chunk_size")):
      if short in given and getattr(model, short) != getattr(resolved, field):
        raise ConfigError(
          f"model.{short}={getattr(model, short)} disagrees with "
          f"model.memory.{field}={getattr(resolved, field)}; set one of them"
        )
    try:
      model = model.replace(memory=resolved, memory_heads=None, memory_chunk=None)
    except ValueError as e:
      raise ConfigError(f"model.memory: {e}") from None
    cfg = dataclasses.replace(cfg, model=model)
  return cfg


def apply_model_overrides(model: TitansConfig, overrides: Sequence[str]) -> TitansConfig:
  """The same path for a model config alone (benchmarks): keys are `model.`-relative,
  e.g. `num_layers=1`, `memory.commit_every=64`."""
  cfg = apply_overrides(
    Config(name="model", model=model), [f"model.{item.strip()}" for item in overrides]
  )
  return cfg.model


def help_text(cfg: Config) -> str:
  """Every config field with its type, default (from `cfg`) and meaning (tyro's help),
  the model's memory shown resolved."""
  shown = dataclasses.replace(cfg, model=cfg.model.replace(memory=cfg.model.memory_config))
  out = io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    tyro.cli(
      Config,
      default=shown,
      args=["--help"],
      prog="--set KEY=VALUE / --KEY=VALUE",
      **{**_TYRO, "console_outputs": True},
    )
  return out.getvalue()


# ------------------------------------------------------------------------------ validation

# Allowed ranges of every numeric field of the sections: key -> (low, low included,
# high, high included); None = unbounded. A test walks every numeric field with 0, a
# negative and a wrong-type value against this table and the fields' meanings.
RANGES = {
  "data.seq_len": (2, True, None, None),
  "data.eval_fraction": (0.0, True, 1.0, False),
  "data.split_seed": (0, True, None, None),
  "data.shuffle_seed": (0, True, None, None),
  "data.separator": (-1, True, None, None),
  "data.mqar_pairs": (1, True, None, None),
  "data.mqar_queries": (1, True, None, None),
  "train.steps": (1, True, None, None),
  "train.batch_size": (1, True, None, None),
  "train.grad_accum_steps": (1, True, None, None),
  "train.lr": (0.0, False, None, None),
  "train.min_lr_ratio": (0.0, True, 1.0, True),
  "train.warmup_steps": (0, True, None, None),
  "train.weight_decay": (0.0, True, None, None),
  "train.b1": (0.0, True, 1.0, False),
  "train.b2": (0.0, True, 1.0, False),
  "train.eps": (0.0, False, None, None),
  "train.grad_clip": (0.0, True, None, None),
  "train.seed": (0, True, None, None),
  "train.log_every": (1, True, None, None),
  "train.eval_every": (0, True, None, None),
  "train.eval_batches": (1, True, None, None),
  "train.checkpoint_every": (1, True, None, None),
  "train.keep_checkpoints": (1, True, None, None),
  "eval.batches": (0, True, None, None),
  "eval.batch_size": (1, True, None, None),
  "eval.niah_lengths": (2, True, None, None),
  "eval.niah_depths": (0.0, True, 1.0, True),
  "eval.niah_samples": (0, True, None, None),
  "eval.sample_tokens": (0, True, None, None),
}
CHOICES = {
  "data.kind": DATA_KINDS,
  "data.niah_task": NIAH_TASKS,
  "data.token_dtype": TOKEN_DTYPES,
  "eval.niah_task": NIAH_TASKS,
  "mesh.memory_heads": MEMORY_HEAD_PLACEMENTS,
}


def _bound_text(lo, lo_in, hi, hi_in) -> str:
  if hi is None:
    return f">= {lo}" if lo_in else f"> {lo}"
  return f"in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"


def _check_niah_length(key: str, task: str, length: int) -> None:
  try:  # the needle, question and answer must fit (their length depends on the task)
    niah_example(example_rng(0, 0), task, length, 0.5)
  except ValueError as e:
    raise ConfigError(f"{key}: {e}") from None


def validate(cfg: Config) -> None:
  """Checks every field (type, range, choice) and the cross-field constraints; raises a
  one-line ConfigError naming the field. The model validates itself when it is built."""
  if not isinstance(cfg.model, TitansConfig):
    raise ConfigError(f"model must be a TitansConfig, got {type(cfg.model).__name__}")
  if not (isinstance(cfg.name, str) and cfg.name):
    raise ConfigError(f"name={cfg.name!r} must be a non-empty string")
  for section, cls in SECTIONS.items():
    part = getattr(cfg, section)
    if not isinstance(part, cls):
      raise ConfigError(f"{section} must be a {cls.__name__}, got {type(part).__name__}")
    try:
      check_types(part, section)
    except ValueError as e:  # "train: lr='x' is not a float" -> "train.lr='x' ..."
      raise ConfigError(str(e).replace(": ", ".", 1)) from None
  for key, bounds in RANGES.items():
    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    lo, lo_in, hi, hi_in = bounds
    for v in value if isinstance(value, tuple) else (value,):
      ok = (v >= lo if lo_in else v > lo) and (hi is None or (v <= hi if hi_in else v < hi))
      if not ok:
        where = f"{key} contains {v}" if isinstance(value, tuple) else f"{key}={v!r}"
        raise ConfigError(f"{where}, not {_bound_text(*bounds)}")
  for key, allowed in CHOICES.items():
    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    if value not in allowed:
      raise ConfigError(f"{key}={value!r}: expected one of {', '.join(allowed)}")
  t, m = cfg.train, cfg.mesh
  if t.batch_size % t.grad_accum_steps:
    raise ConfigError(
      f"train.batch_size={t.batch_size} must be a multiple of "
      f"train.grad_accum_steps={t.grad_accum_steps}"
    )
  for axis in AXES:
    size = getattr(m, axis)
    if size == 0 or size < -1:
      raise ConfigError(f"mesh.{axis}={size} must be a positive size or -1 (fill)")
  if m.sizes.count(-1) > 1:
    fill = ", ".join(f"mesh.{a}=-1" for a in AXES if getattr(m, a) == -1)
    raise ConfigError(f"{fill}: at most one mesh axis may be -1")
  d = cfg.data
  if d.kind == "niah":
    _check_niah_length("data.seq_len", d.niah_task, d.seq_len)
  if cfg.eval.niah_lengths and cfg.eval.niah_samples < 1:
    raise ConfigError(
      f"eval.niah_samples={cfg.eval.niah_samples} must be >= 1 when "
      f"eval.niah_lengths={cfg.eval.niah_lengths} asks for a NIAH grid"
    )
  for length in cfg.eval.niah_lengths:
    _check_niah_length("eval.niah_lengths", cfg.eval.niah_task, length)
  if d.kind == "mqar":
    if 2 * d.mqar_pairs + 2 * d.mqar_queries > d.seq_len + 1:
      raise ConfigError(
        f"data.seq_len={d.seq_len} cannot hold data.mqar_pairs="
        f"{d.mqar_pairs} pairs and data.mqar_queries={d.mqar_queries} queries"
      )
    if cfg.model.vocab_size // 2 - 1 < d.mqar_pairs:
      raise ConfigError(
        f"model.vocab_size={cfg.model.vocab_size} is too small for "
        f"data.mqar_pairs={d.mqar_pairs} distinct keys"
      )
  if cfg.data.kind in ("text", "niah") and cfg.model.vocab_size < 256:
    raise ConfigError(
      f"model.vocab_size={cfg.model.vocab_size} < 256 cannot hold "
      f"byte-level data (data.kind={cfg.data.kind})"
    )


# --------------------------------------------------------------- saving and restoring


def to_dict(obj: Any) -> Any:
  """A JSON-friendly nested dict of a config (tuples become lists)."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
  if isinstance(obj, (tuple, list)):
    return [to_dict(v) for v in obj]
  return obj


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


# Fields that older runs saved and that no longer exist (nothing read them).
REMOVED_FIELDS = {"TrainConfig": ("compute_dtype",)}


def from_dict(cls: Any, data: Any) -> Any:
  """Rebuilds a (nested) config dataclass from `to_dict` output (e.g. a checkpoint's)."""
  hints = field_types(cls)
  kwargs = {}
  for k, v in data.items():
    if k in REMOVED_FIELDS.get(cls.__name__, ()):
      continue
    if k not in hints:
      raise ConfigError(f"saved config has unknown key {cls.__name__}.{k}")
    struct = _struct(hints[k])
    if struct is not None and isinstance(v, dict):
      kwargs[k] = from_dict(struct, v)
    else:
      kwargs[k] = tuple(v) if isinstance(v, list) else v
  return cls(**kwargs)


def comparable_model_dict(model: TitansConfig | dict) -> dict:
  """`to_dict` of a model config (or of its saved dict) with the memory resolved and the
  shortcuts folded in, so that a derived memory and the same memory given explicitly
  (e.g. by `--set model.memory.…` on resume) compare equal."""
  if isinstance(model, dict):
    try:
      model = from_dict(TitansConfig, model)
    except (ConfigError, TypeError, ValueError):
      return model  # not rebuildable: compare as saved
  return to_dict(model.replace(memory=model.memory_config, memory_heads=None, memory_chunk=None))


def config_from_dict(data: dict) -> Config:
  """The Config saved with a checkpoint."""
  return from_dict(Config, {"name": "restored", **data})
