"""Runs: the runner (validation, output plan, resume, locks, record) and its adapters.

Adapters turn arrays, a file, a batch, several hosts or a video into rows for the
runner. May import nst_jax.engine, nst_jax.io, nst_jax.core and nst_jax.config.
"""
