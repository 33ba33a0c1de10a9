"""Files: images, frames, weights and download, checkpoints, run records, job lists.

May import nst_jax.core (pixel conventions, the network's shapes) and nst_jax.config.
"""
