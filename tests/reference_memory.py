"""A naive float64 NumPy reference of the neural long-term memory (docs/spec.md §1).

Written straight from docs/spec.md §1 and the titans-pytorch 0.5.5 details it lists; it shares
no code with `titans_jax/memory/core.py` or `networks.py`. It only reads a
`MemoryConfig` and the slow-parameter pytree produced by `titans_jax.memory.init`.

Everything is processed with plain Python loops: token by token for the projections and
retrieval, chunk by chunk for the memory update, one (batch, head) pair at a time. The
inner gradient of the memory network is derived by hand (manual backprop), so the
reference does not rely on JAX autodiff either.

`reference_apply(params, x, cfg)` processes a whole sequence from a fresh state and
returns `(y, final)` with `final = {"weights", "momentum", "grad_point"}` laid out as in
`apply`'s state: weights / grad_point `{name: B×H×...}`, momentum `{name: O×B×H×...}`
(an empty dict when momentum is off).
"""

from __future__ import annotations

import math

import numpy as np

F64_EPS = float(np.finfo(np.float64).eps)
L2_EPS = 1e-12
LN_EPS = 1e-5
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7

_erf = np.vectorize(math.erf, otypes=[np.float64])


# ------------------------------------------------------------------ scalar helpers ---


def sigmoid(z):
  z = np.asarray(z, np.float64)
  return 1.0 / (1.0 + np.exp(-z))


def softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max())
  return e / e.sum()


def act(name, z):
  z = np.asarray(z, np.float64)
  if name is None or name == "identity":
    return z
  if name == "gelu":  # exact (erf) GELU
    return 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0)))
  if name == "gelu_tanh":
    return 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))
  if name == "silu":
    return z * sigmoid(z)
  if name == "relu":
    return np.maximum(z, 0.0)
  raise ValueError(name)


def act_grad(name, z):
  """d act(z) / dz, elementwise."""
  z = np.asarray(z, np.float64)
  if name is None or name == "identity":
    return np.ones_like(z)
  if name == "gelu":
    cdf = 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf
  if name == "gelu_tanh":
    k = math.sqrt(2.0 / math.pi)
    u = k * (z + 0.044715 * z**3)
    th = np.tanh(u)
    return 0.5 * (1.0 + th) + 0.5 * z * (1.0 - th**2) * k * (1.0 + 3 * 0.044715 * z**2)
  if name == "silu":
    s = sigmoid(z)
    return s * (1.0 + z * (1.0 - s))
  if name == "relu":
    return (z > 0).astype(np.float64)
  raise ValueError(name)


def rmsnorm(v, eps=F64_EPS):
  """torch.nn.RMSNorm(eps=None) without the scale: eps = finfo(float64).eps."""
  v = np.asarray(v, np.float64)
  return v / math.sqrt(float(np.mean(v * v)) + eps)


def l2norm(v):
  return v / max(math.sqrt(float(np.sum(v * v))), L2_EPS)


# ------------------------------------------------------------------ memory network ---


def mem_forward(W, x, cfg):
  """M_W(x) for one head's fast weights W (dict of float64 arrays) and one token x (d).

  Returns (output, cache) where cache holds what the manual backward needs."""
  a = [np.asarray(x, np.float64)]  # a[i] = input to layer i
  zs = []
  h = a[0]
  for i in range(cfg.depth):
    if i > 0:
      zs.append(h)
      h = act(cfg.activation, h)
      a.append(h)
    h = h @ W[f"w{i}"]
  o = h
  cache = {"a": a, "zs": zs, "o": o}
  if cfg.residual_norm:
    mu = float(np.mean(o))
    var = float(np.mean((o - mu) ** 2))
    sd = math.sqrt(var + LN_EPS)
    n = (o - mu) / sd
    out = n * (W["gamma"] + 1.0) + a[0]
    cache.update(n=n, sd=sd)
    return out, cache
  return o, cache


def mem_grad(W, keys, values, lrs, cfg):
  """∇_W Σ_t θ_t · mean_d (M_W(k_t) − v_t)² by hand (manual backprop), float64."""
  grads = {name: np.zeros_like(w) for name, w in W.items()}
  d = keys.shape[-1]
  for k, v, th in zip(keys, values, lrs):
    out, cache = mem_forward(W, k, cfg)
    dout = 2.0 * th * (out - v) / d
    if cfg.residual_norm:
      n, sd = cache["n"], cache["sd"]
      grads["gamma"] += dout * n
      dn = dout * (W["gamma"] + 1.0)
      do = (dn - dn.mean() - n * np.mean(dn * n)) / sd
    else:
      do = dout
    dh = do
    for i in reversed(range(cfg.depth)):
      grads[f"w{i}"] += np.outer(cache["a"][i], dh)
      if i > 0:
        da = W[f"w{i}"] @ dh
        dh = da * act_grad(cfg.activation, cache["zs"][i - 1])
  return grads


def mem_loss(W, keys, values, lrs, cfg):
  """The chunk loss itself (for checking mem_grad by finite differences)."""
  total = 0.0
  for k, v, th in zip(keys, values, lrs):
    out, _ = mem_forward(W, k, cfg)
    total += th * float(np.mean((out - v) ** 2))
  return total


# ------------------------------------------------------------------ update helpers ---


def soft_clamp(g, max_norm):
  """titans-pytorch softclamp_grad_norm on one tensor of one chunk."""
  n = math.sqrt(float(np.sum(g * g)))
  if n == 0.0:
    return np.zeros_like(g)
  half = max_norm / 2.0
  clamped = math.tanh(n / half) * half + half
  return g * (clamped / n)


def hard_clip(g, max_norm):
  """g · min(1, m / ‖g‖) on one tensor of one chunk."""
  n = math.sqrt(float(np.sum(g * g)))
  return g * (max_norm / n) if n > max_norm else g


def newton_schulz(G):
  """Newton–Schulz orthogonalisation of one matrix (titans-pytorch newtonschulz5)."""
  G = np.asarray(G, np.float64)
  transpose = G.shape[0] > G.shape[1]
  X = G.T if transpose else G
  X = X / max(math.sqrt(float(np.sum(X * X))), NS_EPS)
  a, b, c = NS_COEFFS
  for _ in range(NS_STEPS):
    A = X @ X.T
    Bm = b * A + c * (A @ A)
    X = a * X + Bm @ X
  return X.T if transpose else X


# ---------------------------------------------------------------------- the layer ---


def to_numpy64(tree):
  if isinstance(tree, dict):
    return {k: to_numpy64(v) for k, v in tree.items()}
  return np.asarray(tree, dtype=np.float64)


def _project_token(P, x_t, cfg, eps):
  """Store- and retrieve-normed input of one token."""
  if cfg.pre_norm:
    xs = rmsnorm(x_t, eps) * P["store_norm"]["scale"]
    xr = rmsnorm(x_t, eps) * P["retrieve_norm"]["scale"]
  else:
    xs = x_t.copy()
    xr = x_t.copy()
  return xs, xr


def reference_apply(params, x, cfg, rms_eps=None, record=None):
  """Run the memory over x (B×T×D) from a fresh state. Returns (y, final_state).

  `record`, if a dict, is filled with what `titans_jax.memory.diagnostics` reports:
  per token (B×T×H) theta, inner_loss (ℓ_t at the weights before the token's chunk is
  applied), grad_point_loss (ℓ_t at W̄); per complete chunk (B×G×H) alpha, eta
  (B×G×H×O), surprise_norm ‖u_j‖, momentum_norm ‖S_j‖ (all orders), weights_norm ‖W_j‖.

  All arithmetic is float64. `rms_eps` is the RMSNorm eps; titans-pytorch uses
  finfo(dtype).eps of the tensor it normalises, so by default it is
  finfo(cfg.dtype).eps: finfo(float64).eps for a float64 config, while a float32
  config is compared against the same maths with fp32's eps (a large eps relative to
  a small retrieved value is not a rounding error, it is a different function)."""
  if rms_eps is None:
    rms_eps = float(np.finfo(np.dtype(cfg.dtype)).eps)
  P = to_numpy64(params)
  x = np.asarray(x, np.float64)
  B, T, D = x.shape
  H, d, C = cfg.heads, cfg.head_dim, cfg.chunk_size
  names = cfg.fast_weight_names()
  O = cfg.num_momentum_states
  n_chunks = T // C

  y_out = np.zeros((B, T, D))
  if record is not None:
    record.update(
      theta=np.zeros((B, T, H)),
      inner_loss=np.zeros((B, T, H)),
      grad_point_loss=np.zeros((B, T, H)),
      alpha=np.zeros((B, n_chunks, H)),
      eta=np.zeros((B, n_chunks, H, O)),
      surprise_norm=np.zeros((B, n_chunks, H)),
      momentum_norm=np.zeros((B, n_chunks, H)),
      weights_norm=np.zeros((B, n_chunks, H)),
    )

  def norm(tensors):
    return math.sqrt(sum(float(np.sum(t * t)) for t in tensors))

  def token_losses(W, rows, h):
    return [mem_loss(W, k[t : t + 1, h], v[t : t + 1, h], [1.0], cfg) for t in rows]

  final = {
    "weights": {n: np.zeros((B, H) + s) for n, s in cfg.fast_weight_shapes().items()},
    "grad_point": {n: np.zeros((B, H) + s) for n, s in cfg.fast_weight_shapes().items()},
    "momentum": (
      {n: np.zeros((O, B, H) + s) for n, s in cfg.fast_weight_shapes().items()}
      if cfg.momentum
      else {}
    ),
  }

  for b in range(B):
    # ---- per-token projections ----
    xs = np.zeros((T, D))
    xr = np.zeros((T, D))
    for t in range(T):
      xs[t], xr[t] = _project_token(P, x[b, t], cfg, rms_eps)
    raw = {"q": np.zeros((T, H, d)), "k": np.zeros((T, H, d)), "v": np.zeros((T, H, d))}
    for t in range(T):
      for h in range(H):
        raw["q"][t, h] = xr[t] @ P["q_proj"][:, h, :]
        raw["k"][t, h] = xs[t] @ P["k_proj"][:, h, :]
        raw["v"][t, h] = xs[t] @ P["v_proj"][:, h, :]
    if cfg.qkv_conv:
      K = cfg.qkv_conv
      for nm in ("q", "k", "v"):
        kern, bias = P[f"{nm}_conv"]["kernel"], P[f"{nm}_conv"]["bias"]
        conv = np.zeros((T, H, d))
        for t in range(T):
          acc = bias.copy()
          for j in range(K):
            src = t - (K - 1) + j  # kernel[K-1] multiplies token t
            if src >= 0:
              acc = acc + kern[j] * raw[nm][src]
          conv[t] = acc
        raw[nm] = conv
    q = np.zeros((T, H, d))
    k = np.zeros((T, H, d))
    v = np.zeros((T, H, d))
    for t in range(T):
      for h in range(H):
        qt = act(cfg.qkv_activation, raw["q"][t, h])
        kt = act(cfg.qkv_activation, raw["k"][t, h])
        vt = act(cfg.qkv_activation, raw["v"][t, h])
        if cfg.qk_l2norm:
          qt, kt = l2norm(qt), l2norm(kt)
        if cfg.qk_rmsnorm:
          qt = rmsnorm(qt, rms_eps) * (P["q_norm"]["gamma"][h] + 1.0)
          kt = rmsnorm(kt, rms_eps) * (P["k_norm"]["gamma"][h] + 1.0)
        q[t, h], k[t, h], v[t, h] = qt, kt, vt
    theta = np.zeros((T, H))
    for t in range(T):
      for h in range(H):
        theta[t, h] = cfg.max_lr * sigmoid(xs[t] @ P["lr"]["w"][:, h] + P["lr"]["b"][h])

    # ---- per-chunk gates from the pooled store-normed chunk ----
    gates = []
    for j in range(n_chunks):
      chunk = xs[j * C : (j + 1) * C]  # C×D
      if cfg.attn_pool_chunks:
        logits = chunk @ P["attn_pool"]["w"] + P["attn_pool"]["b"]  # C×D
        pooled = np.zeros(D)
        for f in range(D):
          pooled[f] = np.sum(softmax(logits[:, f]) * chunk[:, f])
      else:
        pooled = chunk.mean(0)
      gj = {}
      for h in range(H):
        g = {}
        g["alpha"] = (
          sigmoid(pooled @ P["decay"]["w"][:, h] + P["decay"]["b"][h]) if cfg.forget else 0.0
        )
        if cfg.momentum:
          g["eta"] = [
            sigmoid(pooled @ P["momentum"]["w"][:, h, o] + P["momentum"]["b"][h, o])
            for o in range(cfg.momentum_order)
          ]
        if cfg.learned_momentum_combine:
          g["combine"] = softmax(
            pooled @ P["momentum_combine"]["w"][:, h, :] + P["momentum_combine"]["b"][h]
          )
        if cfg.per_parameter_lr_modulation:
          g["lr_mod"] = [
            sigmoid(pooled @ P["lr_modulation"]["w"][:, h, p] + P["lr_modulation"]["b"][h, p])
            * cfg.max_mem_layer_modulation
            for p in range(len(names))
          ]
        gj[h] = g
      gates.append(gj)
    if record is not None:
      record["theta"][b] = theta
      for j in range(n_chunks):
        for h in range(H):
          record["alpha"][b, j, h] = gates[j][h]["alpha"]
          if cfg.momentum:
            record["eta"][b, j, h] = gates[j][h]["eta"]

    # ---- the memory, head by head ----
    y_heads = np.zeros((T, H, d))
    for h in range(H):
      W = {n: P["W0"][n][h].copy() for n in names}
      Wbar = {n: w.copy() for n, w in W.items()}
      S = [{n: np.zeros_like(w) for n, w in W.items()} for _ in range(O)]
      history = [W]  # history[j + 1] = weights after chunk j
      for j in range(n_chunks):
        sl = slice(j * C, (j + 1) * C)
        g = gates[j][h]
        if record is not None:
          record["inner_loss"][b, sl, h] = token_losses(W, range(j * C, (j + 1) * C), h)
          record["grad_point_loss"][b, sl, h] = token_losses(Wbar, range(j * C, (j + 1) * C), h)
        grad = mem_grad(Wbar, k[sl, h], v[sl, h], theta[sl, h], cfg)
        if cfg.max_grad_norm is not None:
          grad = {n: soft_clamp(grad[n], cfg.max_grad_norm) for n in names}
        if cfg.per_parameter_lr_modulation:
          grad = {n: grad[n] * g["lr_mod"][p] for p, n in enumerate(names)}
        if getattr(cfg, "max_surprise_norm", None) is not None:
          grad = {n: hard_clip(grad[n], cfg.max_surprise_norm) for n in names}
        u = {n: -grad[n] for n in names}
        if cfg.momentum:
          prev_order = u
          for o in range(O):
            S[o] = {n: g["eta"][o] * S[o][n] + prev_order[n] for n in names}
            prev_order = S[o]
          if cfg.learned_momentum_combine:
            stack = ([u] if cfg.learned_combine_include_zeroth else []) + S
            update = {n: sum(g["combine"][i] * s[n] for i, s in enumerate(stack)) for n in names}
          else:
            update = S[-1]
        else:
          update = u
        if record is not None:
          record["surprise_norm"][b, j, h] = norm(u.values())
          record["momentum_norm"][b, j, h] = norm(s[n] for s in S for n in names)
        if cfg.spectral_norm_surprises:
          update = {n: (newton_schulz(upd) if upd.ndim == 2 else upd) for n, upd in update.items()}
        W = {n: (1.0 - g["alpha"]) * W[n] + update[n] for n in names}
        history.append(W)
        if record is not None:
          record["weights_norm"][b, j, h] = norm(W.values())
        if cfg.commit_every is not None and ((j + 1) * C) % cfg.commit_every == 0:
          Wbar = {n: w.copy() for n, w in W.items()}
      if record is not None:  # the incomplete last chunk: not applied yet
        rest = range(n_chunks * C, T)
        record["inner_loss"][b, n_chunks * C :, h] = token_losses(W, rest, h)
        record["grad_point_loss"][b, n_chunks * C :, h] = token_losses(Wbar, rest, h)
      for t in range(T):
        r = (t + 1) // C - 1
        y_heads[t, h], _ = mem_forward(history[r + 1], q[t, h], cfg)
      for n in names:
        final["weights"][n][b, h] = W[n]
        final["grad_point"][n][b, h] = Wbar[n]
        for o in range(O):
          final["momentum"][n][o, b, h] = S[o][n]

    # ---- output: post-norm, gate, merge heads, out projection ----
    for t in range(T):
      heads_out = []
      for h in range(H):
        yh = y_heads[t, h]
        if cfg.post_rmsnorm:
          yh = rmsnorm(yh, rms_eps) * (P["post_norm"]["gamma"][h] + 1.0)
        if cfg.has_gate:
          yh = yh * sigmoid(xr[t] @ P["gate"]["w"][:, h])
        heads_out.append(yh)
      if cfg.has_out_proj:
        out = np.zeros(D)
        for h in range(H):
          out = out + heads_out[h] @ P["out_proj"][h]
        y_out[b, t] = out
      else:
        y_out[b, t] = np.concatenate(heads_out)
  return y_out, final
