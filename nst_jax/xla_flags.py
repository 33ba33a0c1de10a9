"""XLA flags nst-jax needs, set before JAX creates its CPU backend.

`--xla_cpu_enable_concurrency_optimized_scheduler=false`: with it on (the
default in jax 0.10.2), the first execution of a step holding LAPACK eigh
custom calls (the 'mean_cov' style loss with several layers and style masks)
never returned on this project's 2-core CPU machines: every thread idle,
the host blocked on the result, reproducibly; with the flag off it runs, and
the plain Gram step is as fast (0.593/0.588 s against 0.600/0.618 s per
256x256 L-BFGS iteration, bench/bench_step.py, two runs each). Disabling
async dispatch also avoided it (the same symptom as jax-ml/jax#25861).

XLA reads XLA_FLAGS once, when the backend is created: importing nst_jax
before the first JAX computation is enough (main.py does). A flag the user
already set in XLA_FLAGS is left alone. It only concerns the CPU backend.
"""

import os

FLAG = '--xla_cpu_enable_concurrency_optimized_scheduler'

if FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + f' {FLAG}=false').strip()
