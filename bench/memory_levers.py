r"""Memory levers measured and not adopted: remat of VGG stages, a bfloat16 L-BFGS history.

Usage:
  python bench/memory_levers.py remat [--width 512]
  python bench/memory_levers.py history [--width 256] [--iterations 300]

`remat`: XLA's own temporaries (`compiled.memory_analysis()`, no run
needed) and the time of one value-and-gradient of a Gram objective to
relu5_1 (relu4_2 as well, the default layers; LSUV-scaled random
weights, random image), four ways: as the library computes it (the
network, then the loss), the same function written stage by stage (each
stage's convolutions and its layers' Gram terms together, so no feature
outlives its stage), that with every stage under `jax.checkpoint`, and with
every stage a `jax.custom_vjp` whose backward pass recomputes the stage
only once its output's cotangent exists (an optimisation barrier ties the
two, so XLA cannot hoist the recomputation). The one-layer line (relu1_2
alone) is the floor: the first stage's own backward pass at full
resolution, which no remat of stages can remove.

`history`: bench/optimizer_settings.py's loop (the real `update_step`, the
classic objective, tubingen and starry night, content init) with L-BFGS's
s and y stored as bfloat16 (rounded when stored, the pair's curvature test,
rho and gamma taken from the rounded pair, each upcast in the two-loop
recursion) against float32 histories of the same memory: history m in
bfloat16 holds 2m x 2 bytes per value, as history m / 2 in float32.

Both print what they measured; name the CPU (`lscpu`) with every figure.
"""

import argparse
import functools
import os
from pathlib import Path
import subprocess
import sys
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))


def _remat(width: int, height: int, mode: str, layers: tuple[str, ...] | None) -> None:
  import jax
  from jax import lax
  import jax.numpy as jnp
  import numpy as np

  import nst_jax
  from nst_jax.core import tiles

  params = nst_jax.prepare_params(nst_jax.random_scaled_params(0))
  model = nst_jax.make_model()
  spec = (
    nst_jax.LossSpec()
    if layers is None
    else nst_jax.LossSpec(content_layers=layers[:1], style_layers=layers)
  )
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.uniform(-100, 100, (height, width, 3)), jnp.float32)
  feats = nst_jax.network_features(0.5 * image, params, model=model, layers=spec.feature_layers)

  def gram(f):
    f = f.reshape(-1, f.shape[-1])
    return f.T @ f / f.shape[0]

  grams = {name: gram(f) for name, f in feats.items()}
  stages = [names for names, _ in tiles.stages(spec.feature_layers)]

  def stage(names, x, p, g):
    loss = jnp.zeros((), jnp.float32)
    for name in names:
      x = tiles._layer(model, p, name, x)  # noqa: SLF001 - the tiles' own layer, as VGG runs it
      if name in g:
        loss = loss + jnp.sum((gram(x) - g[name]) ** 2)
    return x, loss

  def barrier_remat(f):
    @jax.custom_vjp
    def fn(x, p, g):
      return f(x, p, g)

    def bwd(residuals, cotangent):
      residuals, cotangent = lax.optimization_barrier((residuals, cotangent))
      return jax.vjp(f, *residuals)[1](cotangent)

    fn.defvjp(lambda x, p, g: (f(x, p, g), (x, p, g)), bwd)
    return fn

  wrap = {'stages': lambda f: f, 'checkpoint': jax.checkpoint, 'barrier': barrier_remat}

  def by_stages(x, params, grams):
    total = jnp.zeros((), jnp.float32)
    for names in stages:
      fn = wrap[mode](functools.partial(stage, names))
      x, loss = fn(
        x, {n: params[n] for n in names if n in params}, {n: grams[n] for n in names if n in grams}
      )
      total = total + loss
    return total

  def library(x, params, grams):
    out = nst_jax.network_features(x, params, model=model, layers=spec.feature_layers)
    return sum(jnp.sum((gram(f) - grams[n]) ** 2) for n, f in out.items())

  fn = library if mode == 'library' else by_stages
  compiled = jax.jit(jax.value_and_grad(fn)).lower(image, params, grams).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  jax.block_until_ready(compiled(image, params, grams))
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(image, params, grams))
    times.append(time.perf_counter() - t0)
  print(
    f'{mode:10s} {"+".join(spec.feature_layers) if layers else "default layers":40s} '
    f'{width}x{height}: XLA temporaries {temp / 1e6:7.1f} MB = {temp / (width * height):6.0f} '
    f'bytes per pixel; value and gradient {sorted(times)[1]:.2f} s (median of 3)',
    flush=True,
  )


def _bfloat16_history() -> None:
  """Patches nst_jax.core.optim's L-BFGS to keep s and y in bfloat16 (module docstring)."""
  import jax
  import jax.numpy as jnp
  import optax

  from nst_jax.core import optim

  bf16, f32 = jnp.bfloat16, jnp.float32
  float32_lbfgs = optim.lbfgs

  def lbfgs(*args, **kwargs):
    tx = float32_lbfgs(*args, **kwargs)

    def init(params):
      state = tx.init(params)
      return state._replace(
        s=jax.tree.map(lambda v: v.astype(bf16), state.s),
        y=jax.tree.map(lambda v: v.astype(bf16), state.y),
      )

    return optax.GradientTransformationExtraArgs(init, tx.update)  # same update: backtracks

  def store_pair(state, grads, eps, m):
    rounded = lambda v: v.astype(bf16).astype(f32)  # noqa: E731
    s_new = jax.tree.map(rounded, state.prev_step)
    y_new = jax.tree.map(lambda g, p: rounded(g - p), grads, state.prev_grad)
    sy, yy, ss = (optim._vdot(a, b) for a, b in ((s_new, y_new), (y_new, y_new), (s_new, s_new)))
    accept = (state.count > 0) & (sy > eps * jnp.sqrt(ss * yy))
    slot = state.head

    def put(memory, new):
      return jax.tree.map(
        lambda mem, v: mem.at[slot].set(jnp.where(accept, v.astype(bf16), mem[slot])), memory, new
      )

    return state._replace(
      s=put(state.s, s_new),
      y=put(state.y, y_new),
      rho=jnp.where(accept, state.rho.at[slot].set(1.0 / jnp.where(accept, sy, 1.0)), state.rho),
      head=jnp.where(accept, (slot + 1) % m, slot),
      stored=jnp.minimum(state.stored + accept.astype(jnp.int32), m),
      gamma=jnp.where(accept, sy / jnp.where(accept, yy, 1.0), state.gamma),
    )

  float32_two_loop = optim._two_loop

  def two_loop(grads, s_mem, y_mem, rho, gamma, head, m):
    upcast = lambda memory: jax.tree.map(lambda v: v.astype(f32), memory)  # noqa: E731
    return float32_two_loop(grads, upcast(s_mem), upcast(y_mem), rho, gamma, head, m)

  optim.lbfgs, optim._store_pair, optim._two_loop = lbfgs, store_pair, two_loop


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('lever', choices=('remat', 'history', '_remat_one', '_history_one'))
  parser.add_argument('--width', type=int, default=None)
  parser.add_argument('--iterations', type=int, default=300)
  parser.add_argument('--mode', default='library')
  parser.add_argument('--layers', default='')
  parser.add_argument('--settings', default='')
  args = parser.parse_args()
  me = [sys.executable, __file__]
  if args.lever == 'remat':
    width = args.width or 512
    for mode, layers in [('library', 'relu1_2'), *((m, '') for m in wrap_modes())]:
      # One process each: no compiled program or allocator state carried over.
      subprocess.run(
        [*me, '_remat_one', '--width', str(width), '--mode', mode, '--layers', layers], check=True
      )
  elif args.lever == '_remat_one':
    layers = tuple(args.layers.split(',')) if args.layers else None
    _remat(args.width, args.width * 3 // 4, args.mode, layers)
  elif args.lever == 'history':
    runs = [
      ('float32', 'lbfgs_m30,lbfgs_m15,lbfgs_m10,lbfgs_m5'),
      ('bfloat16', 'lbfgs_m30,lbfgs_m10'),
    ]
    for dtype, settings in runs:
      print(f'history in {dtype}:', flush=True)
      subprocess.run(
        [*me, '_history_one', '--width', str(args.width or 256),
         '--iterations', str(args.iterations), '--settings', settings],
        check=True, env={**os.environ, 'NST_BENCH_HISTORY': dtype},
      )  # fmt: skip
  else:
    if os.environ.get('NST_BENCH_HISTORY') == 'bfloat16':
      _bfloat16_history()
    import optimizer_settings

    sys.argv = [sys.argv[0], '--width', str(args.width), '--iterations', str(args.iterations),
                '--settings', args.settings]  # fmt: skip
    optimizer_settings.main()


def wrap_modes() -> tuple[str, ...]:
  return ('library', 'stages', 'checkpoint', 'barrier')


if __name__ == '__main__':
  main()
