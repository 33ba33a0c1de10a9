"""The iteration engine: the loop, hooks, schedule, compiled steps, sharding, memory.

May import nst_jax.core, nst_jax.io and nst_jax.config; never nst_jax.runs or nst_jax.cli.
"""
