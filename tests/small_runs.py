"""A shallower network for the tests of run mechanics.

Resume after a kill, signals, batches over devices and processes, sharding
and video bookkeeping are tested by comparing a run with itself (or with the
same run laid out differently), not by what the optimiser reaches. Those
tests use the classic style layers up to relu2_1 and relu2_1 for content: the
network stops after conv2_1 (3 of the 13 convolutions a default run
computes), so compiling and iterating cost a fraction of the default's while
every part of the run under test is the same. Tests of the optimiser, the
losses and the network itself keep the default layers.
"""

import jax
import jax.numpy as jnp
import numpy as np

import nst_jax

CONTENT_LAYERS = ('relu2_1',)
STYLE_LAYERS = ('relu1_1', 'relu2_1')
# The same on the command line.
FLAGS = ['--content_layers', ','.join(CONTENT_LAYERS), '--style_layers', ','.join(STYLE_LAYERS)]


def loss_config(**settings) -> nst_jax.LossConfig:
  """nst_jax.LossConfig with the shallow layers (and any other settings)."""
  return nst_jax.LossConfig(content_layers=CONTENT_LAYERS, style_layers=STYLE_LAYERS, **settings)


def he_params(model, seed: int = 0) -> dict:
  """He-initialised params of `model`, drawn by hand from its shapes (model.init takes seconds)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  return {
    name: {
      'kernel': jnp.asarray(
        rng.normal(0, np.sqrt(2 / (9 * leaf['kernel'].shape[2])), leaf['kernel'].shape),
        jnp.float32,
      ),
      'bias': jnp.zeros(leaf['bias'].shape, jnp.float32),
    }
    for name, leaf in shapes.items()
  }
