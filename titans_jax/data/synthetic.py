"""Synthetic long-context tasks, generated on the fly and deterministic per (seed, index).

* S-NIAH (single needle in a haystack, RULER-like; the paper's §5.2 PK / N / W tasks),
  byte-level:
  - "passkey" (PK): repeated filler sentences; needle "The pass key is 68203. Remember
    it. 68203 is the pass key."; answer the digits.
  - "number" (N): varied generated prose; needle "One of the special magic numbers for
    {word} is: {7 digits}."; answer the number.
  - "word" (W): as N with a word as the value.
  The question and answer prefix end the sequence; only the answer bytes carry loss /
  are scored. `depth` in [0, 1] places the needle at that fraction of the haystack.
* MQAR (multi-query associative recall, Zoology): key/value pairs, then queries of keys
  scattered over the rest of the sequence; each query key must be followed by its value.

Every example is `length + 1` tokens; a model reads `tokens[:-1]` and predicts
`tokens[1:]`, with `weights` (length `length`) marking the scored targets.
"""

from __future__ import annotations

import numpy as np

from titans_jax.data.text import encode

NIAH_TASKS = ("passkey", "number", "word")

_PK_FILLER = (
  "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)

_WORDS = (
  "apple river stone cloud garden window silver forest candle mirror harbor lantern "
  "meadow pepper rocket saddle tunnel violet wagon yellow anchor basket cactus dragon "
  "engine falcon glacier hammer island jacket kettle ladder magnet needle orange parrot "
  "quartz ribbon shadow ticket umbrella velvet walnut zipper bridge castle desert "
  "feather guitar helmet igloo jungle koala lemon marble nickel oyster pillow quiver "
  "rabbit sponge tiger unicorn valley whistle yogurt zebra"
).split()

_SUBJECTS = (
  "The committee",
  "A small company",
  "My neighbour",
  "The old library",
  "Every engineer",
  "The river town",
  "Our first prototype",
  "The teacher",
  "A careful reader",
  "The market",
)
_VERBS = (
  "discovered",
  "ignored",
  "rebuilt",
  "questioned",
  "described",
  "measured",
  "celebrated",
  "forgot",
  "borrowed",
  "painted",
)
_OBJECTS = (
  "the quiet harbor",
  "a forgotten recipe",
  "the long winter",
  "an unusual map",
  "the broken clock",
  "a brave idea",
  "the morning train",
  "the distant hills",
  "a simple rule",
  "the last chapter",
)
_TAILS = (
  "before noon",
  "with great care",
  "for no clear reason",
  "after the storm",
  "in the spring",
  "without a word",
  "at the edge of town",
  "once again",
  "during the festival",
  "by accident",
)


def _prose(rng: np.random.Generator, n_bytes: int) -> bytes:
  out, size = [], 0
  while size < n_bytes:
    s = (
      f"{_SUBJECTS[rng.integers(len(_SUBJECTS))]} {_VERBS[rng.integers(len(_VERBS))]} "
      f"{_OBJECTS[rng.integers(len(_OBJECTS))]} {_TAILS[rng.integers(len(_TAILS))]}. "
    )
    out.append(s)
    size += len(s)
  return "".join(out).encode()


def _haystack(rng: np.random.Generator, task: str, n_bytes: int) -> bytes:
  if n_bytes <= 0:
    return b""
  if task == "passkey":
    reps = n_bytes // len(_PK_FILLER) + 1
    return (_PK_FILLER * reps).encode()[:n_bytes]
  return _prose(rng, n_bytes)[:n_bytes]


def _needle(rng: np.random.Generator, task: str) -> tuple[bytes, bytes, bytes]:
  """(needle sentence, question ending in the answer prefix, answer)."""
  if task == "passkey":
    value = str(rng.integers(10_000, 100_000))
    return (
      f"The pass key is {value}. Remember it. {value} is the pass key. ".encode(),
      b" What is the pass key? The pass key is ",
      value.encode(),
    )
  key = _WORDS[rng.integers(len(_WORDS))]
  if task == "number":
    value = str(rng.integers(1_000_000, 10_000_000))
    kind = "number"
  elif task == "word":
    value = _WORDS[rng.integers(len(_WORDS))]
    kind = "word"
  else:
    raise ValueError(f"unknown NIAH task {task!r}; expected one of {NIAH_TASKS}")
  return (
    f"One of the special magic {kind}s for {key} is: {value}. ".encode(),
    f" What is the special magic {kind} for {key} mentioned in the provided text? "
    f"The special magic {kind} for {key} mentioned in the provided text is ".encode(),
    value.encode(),
  )


def niah_example(
  rng: np.random.Generator, task: str, length: int, depth: float
) -> dict[str, np.ndarray]:
  """One S-NIAH example of exactly `length + 1` byte tokens.

  Returns:
    {"tokens": int32[length + 1], "weights": float32[length]} with weights 1 on the
    targets that are answer bytes.

  Raises:
    ValueError: `length` is too short to hold the needle, question and answer.
  """
  needle, question, answer = _needle(rng, task)
  fixed = len(needle) + len(question) + len(answer)
  hay_len = length + 1 - fixed
  if hay_len < 0:
    raise ValueError(
      f"NIAH length {length} is shorter than the {fixed} bytes of "
      f"needle + question + answer for task {task!r}"
    )
  hay = _haystack(rng, task, hay_len)
  pos = int(round(float(np.clip(depth, 0.0, 1.0)) * hay_len))
  if 0 < pos < hay_len:  # snap back to a sentence boundary so the needle reads naturally
    cut = hay.rfind(b". ", 0, pos)
    pos = cut + 2 if cut >= 0 else 0
  seq = hay[:pos] + needle + hay[pos:] + question + answer
  assert len(seq) == length + 1, (len(seq), length)
  tokens = np.frombuffer(seq, dtype=np.uint8).astype(np.int32)
  weights = np.zeros((length,), np.float32)
  weights[length - len(answer) :] = 1.0
  return {"tokens": tokens, "weights": weights}


def mqar_example(
  rng: np.random.Generator, length: int, num_pairs: int, num_queries: int, vocab_size: int
) -> dict[str, np.ndarray]:
  """One multi-query associative-recall example of `length + 1` tokens.

  Keys are drawn from [1, V/2), values from [V/2, V), token 0 is filler. The first
  `2 * num_pairs` tokens are k₁ v₁ k₂ v₂ …; `num_queries` (key, value) pairs of those
  re-appear at random non-overlapping positions later; the values of the queries are
  the scored targets.
  """
  half = vocab_size // 2
  if half - 1 < num_pairs or vocab_size - half < 1:
    raise ValueError(f"vocab_size={vocab_size} too small for {num_pairs} distinct keys")
  if 2 * num_pairs + 2 * num_queries > length + 1:
    raise ValueError(
      f"MQAR length {length} cannot hold {num_pairs} pairs and {num_queries} queries"
    )
  keys = rng.choice(np.arange(1, half), size=num_pairs, replace=False)
  values = rng.integers(half, vocab_size, size=num_pairs)
  tokens = np.zeros((length + 1,), np.int32)
  tokens[0 : 2 * num_pairs : 2] = keys
  tokens[1 : 2 * num_pairs : 2] = values
  rest = length + 1 - 2 * num_pairs
  slots = rest // 2
  chosen = np.sort(rng.choice(slots, size=num_queries, replace=False))
  which = rng.integers(0, num_pairs, size=num_queries)
  weights = np.zeros((length,), np.float32)
  for slot, w in zip(chosen, which):
    pos = 2 * num_pairs + 2 * slot
    tokens[pos], tokens[pos + 1] = keys[w], values[w]
    weights[pos] = 1.0  # target at input position `pos` is tokens[pos + 1], the value
  return {"tokens": tokens, "weights": weights}


def example_rng(seed: int, index: int) -> np.random.Generator:
  """The generator of example `index` in stream `seed` (order-free, so resumable)."""
  return np.random.default_rng([seed, index])


def niah_prompt_answer(
  task: str, length: int, depth: float, seed: int, index: int
) -> tuple[np.ndarray, str]:
  """The prompt tokens (without the answer) and the answer text of one NIAH example."""
  ex = niah_example(example_rng(seed, index), task, length, depth)
  n_ans = int(ex["weights"].sum())
  tokens = ex["tokens"]
  return tokens[:-n_ans], bytes(tokens[-n_ans:].astype(np.uint8)).decode()


__all__ = [
  "NIAH_TASKS",
  "niah_example",
  "mqar_example",
  "example_rng",
  "niah_prompt_answer",
  "encode",
]
