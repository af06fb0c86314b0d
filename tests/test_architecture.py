"""The package map of docs/architecture.md, enforced: every import in titans_jax/ goes
down a level (or stays inside its own package), `training` and `evaluation` never import
each other, nothing imports `benchmarks`/`tests`, and no project import hides inside a
function. Parses source with `ast`; imports nothing of the project, compiles nothing."""

import ast
import functools
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "titans_jax"

# Longest prefix wins. Keep in step with the table in docs/architecture.md.
LEVELS = {
  "titans_jax.fieldcheck": 0,
  "titans_jax.layers": 0.5,  # kernels place themselves on the active mesh (sharding.rules)
  "titans_jax.sharding": 0,
  "titans_jax.memory": 1,
  "titans_jax.models": 2,
  "titans_jax.data": 3,
  "titans_jax.perf": 3,
  "titans_jax.config": 3.5,  # the experiment Config (over data)
  "titans_jax.cli": 4,  # the scripts' command line (over config)
  "titans_jax.runtime": 4,
  "titans_jax.training": 5,
  "titans_jax.evaluation": 5,
  "titans_jax.interop": 5,
}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, name: str) -> str:
  """`from module import name`: the submodule `module.name` when it exists, else module."""
  sub = PKG.parent / (module + "." + name).replace(".", "/")
  return f"{module}.{name}" if sub.with_suffix(".py").exists() or sub.is_dir() else module


def _imports(path: pathlib.Path):
  """(imported module, line, inside a function?) for every import in `path`."""
  tree = ast.parse(path.read_text(), str(path))
  me = _module_name(path)
  is_pkg = path.name == "__init__.py"
  out = []
  for fn_node in [None] + [
    n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
  ]:
    body = tree.body if fn_node is None else fn_node.body
    nodes = (
      [n for stmt in body for n in ast.walk(stmt)]
      if fn_node is not None
      else [
        n
        for stmt in body
        if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        for n in ast.walk(stmt)
      ]
    )
    for n in nodes:
      if isinstance(n, ast.Import):
        out += [(a.name, n.lineno, fn_node is not None) for a in n.names]
      elif isinstance(n, ast.ImportFrom):
        mod = n.module or ""
        if n.level:  # relative: resolve against this module's package
          base = me.split(".") if is_pkg else me.split(".")[:-1]
          base = base[: len(base) - (n.level - 1)]
          mod = ".".join(base + ([mod] if mod else []))
        out += [
          (
            _resolve(mod, a.name) if mod.startswith("titans_jax") else mod,
            n.lineno,
            fn_node is not None,
          )
          for a in n.names
        ]
  # Methods of classes are walked from the FunctionDef list; class bodies' own imports:
  for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
    for stmt in cls.body:
      if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        raise AssertionError(f"{path}:{stmt.lineno}: import in a class body")
  return sorted(set(out))


def _level(module: str):
  best = max(
    (p for p in LEVELS if module == p or module.startswith(p + ".")), key=len, default=None
  )
  return (best, LEVELS[best]) if best else (None, None)


def _package(module: str) -> str:
  return ".".join(module.split(".")[:2])


def _files():
  return sorted(PKG.rglob("*.py"))


def _violations():
  upward, lazy, scripts = [], [], []
  for path in _files():
    me = _module_name(path)
    if me == "titans_jax":  # the root re-exports the public API
      continue
    my_unit, my_level = _level(me)
    assert my_unit is not None, f"{me} is on no line of the map (add it to LEVELS and the docs)"
    for target, line, in_function in _imports(path):
      where = f"{path.relative_to(ROOT)}:{line}"
      if target.split(".")[0] in ("benchmarks", "tests"):
        scripts.append(f"{where}: imports {target}")
      if not target.startswith("titans_jax"):
        continue
      if in_function:
        lazy.append(f"{where}: function-local import of {target}")
      if _package(target) == _package(me) or target == "titans_jax":
        continue
      unit, level = _level(target)
      if level is None or level >= my_level:
        upward.append(
          (me, unit or target, f"{where}: {me} (level {my_level}) imports {target} (level {level})")
        )
  return upward, lazy, scripts


@functools.lru_cache(maxsize=1)
def _tree_violations():
  """`_violations()` of the real tree, parsed once for all the tests below."""
  return _violations()


def test_imports_go_down_the_map():
  upward, _, _ = _tree_violations()
  bad = [msg for _, _, msg in upward]
  assert not bad, "upward imports (see docs/architecture.md):\n" + "\n".join(bad)


def test_no_project_import_inside_functions():
  _, lazy, _ = _tree_violations()
  assert not lazy, "move to the top of the module:\n" + "\n".join(lazy)


def test_nothing_imports_scripts():
  _, _, scripts = _tree_violations()
  assert not scripts, "\n".join(scripts)


def test_training_and_evaluation_never_import_each_other():
  for path in _files():
    me = _module_name(path)
    for pkg, other in (
      ("titans_jax.training", "titans_jax.evaluation"),
      ("titans_jax.evaluation", "titans_jax.training"),
    ):
      if me.startswith(pkg):
        bad = [t for t, _, _ in _imports(path) if t.startswith(other)]
        assert not bad, f"{me} imports {bad}"


@pytest.mark.parametrize(
  "source,expected",
  [
    ("from titans_jax.training import loop\n", "upward"),
    ("def f():\n  from titans_jax.models import Titans\n", "lazy"),
    ("import benchmarks.model_bench\n", "scripts"),
  ],
)
def test_the_checker_catches_each_kind(tmp_path, monkeypatch, source, expected):
  """A planted bad module in a copy of the map is reported (the checks can fail)."""
  fake = PKG / "layers" / "_planted_for_test.py"
  monkeypatch.setattr(pathlib.Path, "rglob", lambda self, pat: [fake] if self == PKG else [])
  monkeypatch.setattr(pathlib.Path, "read_text", lambda self, *a, **k: source)
  upward, lazy, scripts = _violations()
  found = {"upward": [m for *_, m in upward], "lazy": lazy, "scripts": scripts}
  assert found[expected], found
