"""Type checks of frozen config dataclasses against their annotations.

Every config (`MemoryConfig`, `TitansConfig`, the training sections) calls
`check_types` first in its validation, so that a value of the wrong type is reported
as `owner.field=value: expected T` instead of failing later inside a comparison.
Annotations are read with `typing.get_type_hints`; supported: bool, int, float, str,
Optional[X], tuple[X, ...] and nested dataclasses (checked by their own validation).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def _matches(value: Any, typ: Any) -> bool:
  origin, args = typing.get_origin(typ), typing.get_args(typ)
  if typ is Any:
    return True
  if origin in (typing.Union, types.UnionType):
    return any(_matches(value, a) for a in args)
  if typ is type(None):
    return value is None
  if typ is bool:
    return isinstance(value, bool)
  if typ is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if typ is float:  # an int is a fine float (lr=1)
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if origin is tuple:
    if not isinstance(value, tuple):
      return False
    if len(args) == 2 and args[1] is Ellipsis:
      return all(_matches(v, args[0]) for v in value)
    return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
  if isinstance(typ, type):
    return isinstance(value, typ)
  return True


def type_name(typ: Any) -> str:
  """A short, readable name of an annotation: 'int', 'float or None', 'tuple of str'."""
  origin, args = typing.get_origin(typ), typing.get_args(typ)
  if origin in (typing.Union, types.UnionType):
    return " or ".join(type_name(a) for a in args)
  if typ is type(None):
    return "None"
  if origin is tuple:
    return f"tuple of {type_name(args[0])}" if args else "tuple"
  return getattr(typ, "__name__", str(typ))


def field_types(cls: Any) -> dict[str, Any]:
  """{field name: resolved annotation} of a dataclass type."""
  return typing.get_type_hints(cls)


def check_types(obj: Any, owner: str) -> None:
  """Raises ValueError('owner: field=value is not a T') for the first mistyped field."""
  hints = field_types(type(obj))
  for f in dataclasses.fields(obj):
    value, typ = getattr(obj, f.name), hints[f.name]
    if not _matches(value, typ):
      raise ValueError(f"{owner}: {f.name}={value!r} is not a {type_name(typ)}")
