"""The pure core: VGG-19, pixel conventions, losses, the objective and step, optimisers.

Arrays and pytrees in, arrays out: imports nothing from the other sub-packages
(no files, no Pillow, no absl, no config objects). Only nst_jax.errors.
"""
