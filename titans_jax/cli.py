"""Command-line parsing shared by train.py and eval.py.

  --config PATH        a configs/*.py file (default: configs/default.py)
  --workdir PATH       run directory (checkpoints, TensorBoard, metrics)
  --set KEY=VALUE      override any config field (repeatable), e.g. --set train.steps=100
  --KEY=VALUE          shorthand for --set, e.g. --train.steps=100 --model.memory.commit_every=64
  --help               the script's flags, then every config field (type, default from
                       --config, meaning), model.memory.* included

Script flags are argparse's; the config tree's parsing, help and types are tyro's, through
`config_lib.apply_overrides` / `config_lib.help_text` (docs/configuration.md).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import Optional

import jax

from titans_jax import config as config_lib
from titans_jax.sharding import distributed, hosts

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.py"
_SECTIONS = ("model.", "data.", "train.", "eval.", "mesh.", "name=")


def build_parser(description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    description=description,
    epilog="Any config field: --set section.field=value or --section.field=value "
    "(sections: model, model.memory, data, train, eval, mesh). Lists: "
    "comma-separated (--data.paths=a.bin,b.bin); None: --model.memory_layers=None.",
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--config", default=None, help=f"config file (default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)})"
  )
  p.add_argument("--workdir", default=None, help="run directory (default: runs/<config name>)")
  p.add_argument(
    "--set",
    dest="overrides",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override a config field; repeatable",
  )
  return p


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
  """--coordinator_address / --num_processes / --process_id (or the JAX_* env vars)."""
  g = parser.add_argument_group("multi-process (jax.distributed; default: JAX_* env vars)")
  g.add_argument("--coordinator_address", default=None, help="host:port of process 0")
  g.add_argument("--num_processes", type=int, default=None)
  g.add_argument("--process_id", type=int, default=None)


def prefer_cpu_without_accelerator(dev: pathlib.Path = hosts.DEV) -> bool:
  """On a host with no accelerator device file, run JAX on the CPU only.

  An installed libtpu (the `tpu` extra, for ahead-of-time TPU compiles) otherwise tries
  to start a TPU on every run and prints a page of initialisation errors. Ahead-of-time
  TPU compiles (`--target`) still work: they need libtpu, not a TPU backend. Leaves an
  explicit JAX_PLATFORMS / jax_platforms alone. Call before anything touches a device.
  Returns whether it pinned the CPU.
  """
  if jax.config.jax_platforms or hosts.accelerator_attached(dev):
    return False
  jax.config.update("jax_platforms", "cpu")
  return True


def init_distributed(args) -> bool:
  """jax.distributed.initialize from the flags / environment (before any device use)."""
  return distributed.initialize(
    getattr(args, "coordinator_address", None),
    getattr(args, "num_processes", None),
    getattr(args, "process_id", None),
  )


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
  """(args, overrides): flags, with `--a.b=v` / `--a.b v` collected as `a.b=v` overrides
  after the `--set` ones."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if "-h" in argv or "--help" in argv:
    print_help(parser, argv)
  rest, shorthand = [], []
  i = 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--") and (a[2:].startswith(_SECTIONS) or "." in a.split("=", 1)[0]):
      body = a[2:]
      if "=" not in body:
        if i + 1 >= len(argv):
          parser.error(f"{a} needs a value")
        body = f"{body}={argv[i + 1]}"
        i += 1
      shorthand.append(body)
    else:
      rest.append(a)
    i += 1
  args = parser.parse_args(rest)
  return args, list(args.overrides) + shorthand


def print_help(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
  """The script's flags (argparse), then every config field with its type, default (from
  --config, else configs/default.py) and meaning; exits 0."""
  known, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
  path = getattr(known, "config", None) or DEFAULT_CONFIG
  parser.print_help()
  try:
    cfg = config_lib.load_config(path)
  except config_lib.ConfigError as e:
    parser.exit(2, f"error: {e}\n")
  print(f"\nConfig fields (defaults from {path}); set them with --set KEY=VALUE or --KEY=VALUE:\n")
  print(config_lib.help_text(cfg))
  parser.exit(0)


def resolve(
  parser: argparse.ArgumentParser, base: config_lib.Config, overrides: Sequence[str]
) -> config_lib.Config:
  """`base` with overrides applied and validated; a bad key/value exits naming it."""
  try:
    cfg = config_lib.apply_overrides(base, overrides)
    config_lib.validate(cfg)
  except config_lib.ConfigError as e:
    parser.exit(2, f"error: {e}\n")
  return cfg


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
  """(args, Config): --config (default configs/default.py) with overrides applied."""
  args, overrides = parse_args(parser, argv)
  try:
    base = config_lib.load_config(args.config or DEFAULT_CONFIG)
  except config_lib.ConfigError as e:
    parser.exit(2, f"error: {e}\n")
  cfg = resolve(parser, base, overrides)
  if args.workdir is None:
    args.workdir = str(pathlib.Path("runs") / cfg.name)
  return args, cfg
