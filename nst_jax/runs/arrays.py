"""`stylize`: style transfer on arrays, the library's one-call entry point.

Arrays in, arrays out, nothing read or written unless asked (a checkpoint);
`nst_jax.runs.runner.run` is the same on files. Both run the engine, so the
schedule, colour controls, masks and checkpoints behave identically.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import os
from pathlib import Path
import signal
from typing import Any

import jax
import numpy as np

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.config import checks
from nst_jax.core import checks as core_checks
from nst_jax.core import mask_checks
from nst_jax.core import objective
from nst_jax.core import pixels
from nst_jax.core import step as core
from nst_jax.engine import compile_cache
from nst_jax.engine import engine as engine_lib
from nst_jax.engine import hooks as hooks_lib
from nst_jax.engine import loop as loop_lib
from nst_jax.engine import memory as memory_lib
from nst_jax.engine import rows as rows_lib
from nst_jax.engine import signals
from nst_jax.io import images as image_lib
from nst_jax.io import weight_checks
from nst_jax.io import weights as weights_lib
from nst_jax.runs import inputs as inputs_lib
from nst_jax.runs import runner

# What a resumed stylize is given again, by the checkpoint's name for it:
# (what differs, the arguments to pass as before).
_RESUME_INPUTS = {
  'content_pixels': ('the content differs', 'content'),
  'style_pixels': ('the style differs', 'style'),
  'mask_pixels': ('the masks differ', 'content_mask and style_masks'),
  'init_pixels': ('the init_image differs', 'init_image'),
  'weights_hash': ('the weights differ', 'weights'),
}


def _asked(should_stop: Callable[[], Any] | None) -> int | None:
  """should_stop's answer as the loop's flag: a signal number (1-64) as it is, else ASKED."""
  asked = should_stop() if should_stop is not None else None
  if isinstance(asked, np.ndarray | np.generic | jax.Array) and np.ndim(asked) == 0:
    asked = asked.item()  # np.int64(2), np.bool_, a 0-d array
  if asked is not None and not isinstance(asked, bool | int):  # trial 21: arrays; 23: 'no' stopped
    shape = f' of shape {np.shape(asked)}' if np.ndim(asked) else f' {asked!r}'
    raise errors.ConfigError(
      f'should_stop returned {type(asked).__name__}{shape}; return True (or a signal number '
      '1-64) to stop, else False or None'
    )
  if not asked:
    return None
  is_signal = isinstance(asked, int) and not isinstance(asked, bool) and 0 < asked < signal.NSIG
  return asked if is_signal else loop_lib.ASKED


def _history(per_row: dict[int, list[dict]], n: int, *, batched: bool) -> list[dict]:
  """The record's history: row 0's entries, each loss term a list over the N rows if batched."""
  if not batched:
    return list(per_row[0])
  entries = []
  for same in zip(*(per_row[r] for r in range(n)), strict=True):
    entry = {k: v for k, v in same[0].items() if k in ('scale', 'iteration', 'time_s')}
    entries.append({**entry, **{k: [e[k] for e in same] for k in same[0] if k not in entry}})
  return entries


def _check_hooks(callback, should_stop, record) -> None:
  """Refuses a callback, should_stop or record of the wrong kind (trial 21: Python's errors)."""
  for name, fn, kind in (
    ('callback', callback, 'a function (iteration, rgb) -> None'),
    ('should_stop', should_stop, 'a function returning True (or a signal number) to stop'),
  ):
    if fn is not None and not callable(fn):
      raise errors.ConfigError(f'{name} must be {kind} or None, got {type(fn).__name__} {fn!r}')
  if record is not None and not isinstance(record, dict):
    raise errors.ConfigError(
      f'record must be a dict, which stylize fills, got {type(record).__name__}; pass record={{}}'
    )


def _in_stylize_words(e: errors.ResumeMismatch) -> errors.ResumeMismatch:
  """The checkpoint's refusal naming stylize's arguments, not the file pipeline's fields.

  stylize sets inputs.width from the content and has no save.path: its
  caller gave arrays, a config and checkpoint=.
  """
  if e.held:  # fewer iterations than the checkpoint holds
    what = 'it holds ' + e.held.replace('schedule.iterations', 'config.schedule.iterations')
    again = f'a config with schedule.iterations {e.saved} (or more)'
  elif e.setting == 'inputs.width':
    what = f"the content is {e.now} px wide, the checkpoint's {e.saved}"
    again = 'the same content'
  elif e.setting == 'init_pixels' and 'none' in (e.saved, e.now):
    # Trial 18: "pass the same init_image" to a run that had none.
    had = 'an' if e.now == 'none' else 'no'
    what = f"the checkpoint's run had {had} init_image"
    again = 'the same init_image' if e.now == 'none' else 'no init_image'
  elif e.setting == 'loss_fn' and e.saved != 'null' and ' ' not in e.saved:
    # Trial 31 V3: before 45c6757 a checkpoint named its loss_fn `module.qualname`,
    # which cannot tell two of one name apart: "pass that loss_fn" could not help.
    what = (
      f'an older nst-jax wrote it, naming its loss_fn {e.saved} without its code, so this one '
      'cannot be checked against it'
    )
    again = None
  elif e.setting == 'loss_fn' and 'declared:' in f'{e.saved} {e.now}':  # trial 44
    # Trial 46 N8: an identity declared 'none' read as none declared.
    said = ['the identity ' + repr(v.strip('"').split()[-1].replace('declared:', '', 1))
            if 'declared:' in v else 'no identity' for v in (e.now, e.saved)]  # fmt: skip
    what = f"the loss_fn declares {said[0]}, the checkpoint's run {said[1]}"
    again = "the loss_fn as the checkpoint's run declared it (nst_jax_identity)"
    if said[0] == said[1]:  # an earlier nst-jax counted the function's name too (trial 48 F9)
      name = e.saved.strip('"').split()[0]
      what = f'{what}, but under the name {name}, which an earlier nst-jax counted too'
      again = None
  elif e.setting == 'loss_fn' and e.saved.split()[0] == e.now.split()[0]:  # one name (trial 35)
    name, was, now = (part.strip('"') for part in (*e.now.split()[:1], e.saved.split()[-1],
                                                   e.now.split()[-1]))  # fmt: skip
    what = (
      f"the loss_fn {name} computes otherwise than the checkpoint's run's (digest {now}; the "
      f"checkpoint's {was}: other code or values, a host callback's Python state too, or traced "
      'otherwise, as under jax.jit or by another JAX version; state that leaves the result '
      'alone, a list a host callback records into, say: declare it, loss_fn.nst_jax_identity = '
      "'my-loss-v1' (on the instance, for a bound method), and start over)"
    )
    again = "the loss_fn the checkpoint's run had"
  elif e.setting == 'loss_fn':  # trial 27: another went on, unsaid; 29: named, both
    was = 'the default objective' if e.saved == 'null' else e.saved
    now = 'the default objective' if e.now == 'null' else e.now
    what = f"the loss_fn is {now}, the checkpoint's run had {was}"
    again = 'no loss_fn (the default objective)' if e.saved == 'null' else f'the loss_fn {was}'
  elif e.setting in _RESUME_INPUTS:
    what, again = _RESUME_INPUTS[e.setting]
    what, again = what + " from the checkpoint's", f'the same {again}'
  else:
    what = f'config.{e.setting} differs (checkpoint {e.saved}, now {e.now})'
    again = 'the same config'
  fix = f'pass {again} to resume, or another checkpoint= path (or remove this one) to start over'
  if again is None:
    fix = 'start over with another checkpoint= path (or remove this one)'
  return errors.ResumeMismatch(
    f'cannot resume from {e.path}: {what}; {fix}',
    path=e.path,
    setting=e.setting,
    saved=e.saved,
    now=e.now,
    held=e.held,
  )


def _config(config: Any) -> config_lib.StyleConfig:
  """stylize's config (None: the defaults), or an ArgumentError naming how to build one."""
  return (
    config_lib.StyleConfig() if config is None else config_lib.as_style_config(config, 'config')
  )


def _one_or(n: int) -> str:
  """How many images of a batched argument `n` content images take: '1' or '1 or n'."""
  return '1' if n == 1 else f'1 or {n}'


def _rows(cfg, content, style, content_mask, style_masks, init_image, checkpoint):
  """The engine's rows for arrays: one per content image, checked."""
  content_b = np.asarray(pixels.batched(pixels.as_rgb(content, 'content')))
  if not len(content_b):  # trial 27: KeyError 0
    raise errors.ConfigError(f'content holds no images (shape {content_b.shape}); pass one or more')
  items = list(style) if isinstance(style, (list, tuple)) else [style]
  if not items:
    raise errors.ConfigError('no style image given; pass one: stylize(content, style, ...)')
  if len(items) > 1 and any(isinstance(s, (list, tuple)) or np.ndim(s) < 2 for s in items):
    # A list is several styles: one image's .tolist() read as H styles of [W, 3].
    raise errors.ConfigError(
      'style is a nested list; pass np.asarray(style) for one image, or a list of [H, W, 3] '
      'arrays to blend several'
    )
  styles = [
    np.asarray(pixels.batched(pixels.as_rgb(s, 'style' if len(items) == 1 else f'style {i}')))
    for i, s in enumerate(items)
  ]
  n, height, width = content_b.shape[:3]
  if cfg.inputs.style_scale != 1.0:  # as the file pipeline: style_scale x the output width
    sw = inputs_lib.style_width(cfg, width)
    styles = [np.stack([image_lib.resize_to_width(im, sw) for im in s]) for s in styles]
  for i, s in enumerate(styles):
    if s.shape[0] not in (1, n):
      # Each content image takes its own style image (or all share one): the
      # others would be dropped without a word.
      raise errors.ConfigError(
        f'{"style" if len(styles) == 1 else f"style {i}"} has {s.shape[0]} images for {n} '
        f'content image(s); give {_one_or(n)}: to stylise one content with each, repeat it '
        f'(np.repeat(content, {s.shape[0]}, axis=0)); to blend them, pass them as a list'
      )
  mask_checks.mask_size(content_mask, (height, width), 'content_mask')
  mask_checks.mask_size(style_masks, (len(styles), height, width), 'style_masks')
  checks.styles_and_masks(
    len(styles),
    n_masks=np.shape(style_masks)[-3] if np.ndim(style_masks) >= 3 else 0,
    blend_weights=cfg.inputs.style_blend_weights,
    masks_name='style_masks',
  )
  cmasks = mask_checks.per_image(content_mask, n, 2, (height, width), 'content_mask')
  smasks = mask_checks.per_image(style_masks, n, 3, (len(styles), height, width), 'style_masks')
  if cfg.inputs.init not in config_lib.INITS and init_image is None:
    if not os.path.lexists(cfg.inputs.init):  # a typo of a keyword ('randm') more often than not
      raise errors.ConfigError(
        f'inputs.init {cfg.inputs.init!r} is not one of {", ".join(config_lib.INITS)}, '
        'and no image file of that name exists; pass one of those, the path of an image file, '
        'or init_image='
      )
    init_image = image_lib.load_image(cfg.inputs.init, max_pixels=cfg.inputs.max_image_pixels)
  init = (
    None
    if init_image is None
    else np.asarray(pixels.batched(pixels.as_rgb(init_image, 'init_image')))
  )
  if init is not None:
    # As the styles: row k took init[min(k, last)], the others were dropped without a word.
    core_checks.start_batch(init.shape[0], n, 'init_image')
  if checkpoint is not None and n != 1:
    raise errors.ConfigError('a checkpoint holds one image; stylize a batch without one')
  return {
    k: rows_lib.Row(
      content=content_b[k],
      styles=[s[min(k, s.shape[0] - 1)] for s in styles],
      content_mask=cmasks[k],
      style_masks=smasks[k],
      init_rgb=None if init is None else init[min(k, init.shape[0] - 1)],
      checkpoint=checkpoint,
    )
    for k in range(n)
  }


@errors.keywords_checked(known=config_lib.as_setting)
def stylize(
  content: jax.typing.ArrayLike,
  style: jax.typing.ArrayLike | Sequence[jax.typing.ArrayLike],
  *,
  config: config_lib.StyleConfig | None = None,
  weights: 'weights_lib.Weights | str | os.PathLike | None' = None,
  callback: Callable[[int, np.ndarray], None] | None = None,
  checkpoint: str | os.PathLike | None = None,
  should_stop: Callable[[], int | None] | None = None,
  content_mask: jax.typing.ArrayLike | None = None,
  style_masks: jax.typing.ArrayLike | None = None,
  init_image: jax.typing.ArrayLike | None = None,
  record: dict | None = None,
  monitor=None,
  loss_fn: core.LossFn = objective.objective,
) -> np.ndarray:
  """Transfers the style of `style` onto `content`.

  The images are used at the size given (the content's width is the output
  width; `config.inputs.width` is ignored), except that a
  `config.inputs.style_scale` other than 1 resizes each style to
  style_scale x the content's width (Lanczos, keeping its aspect ratio), as
  the file pipeline does; at 1, the default, the styles keep their size.
  For each stage of the schedule
  (`nst_jax.engine.schedule.plan`: by default all of `config.schedule.iterations`
  at one scale, or coarse to fine), content, styles (by the same ratio) and
  masks are resized, the targets computed, and the jitted step run from the
  previous stage's result upsampled; the colour controls of `config.color`
  apply before and after.

  Args:
    content: RGB in [0, 1], [H, W, 3] or [N, H, W, 3] (N independent
      images, split over the local devices when `config.run.shard` is
      'jobs', the default, as batch runs are). Floats outside [0, 1] are
      refused; uint8 is divided by 255 (`nst_jax.core.pixels.as_rgb`, the
      rule of every RGB argument).
    style: RGB in [0, 1], [Hs, Ws, 3] (any size) or [N, Hs, Ws, 3], or a list
      of those for several styles (blended with
      `config.inputs.style_blend_weights`, or placed by `style_masks`); one
      image as nested lists (`.tolist()`) is refused: pass np.asarray(style).
    config: the settings; None = StyleConfig() defaults. stylize reads
      arrays and writes nothing but `checkpoint`, so these fields are
      ignored (not refused: one config serves files and arrays):
      `inputs.content_path`, `inputs.style_path`, `inputs.content_mask`,
      `inputs.style_masks` (pass arrays), `inputs.width` (the content's
      width is the output's), `save.path`, `save.bit_depth`,
      `save.quality`, `save.record`, `save.overwrite` (the result is
      returned; `record=` fills a dict), `run.checkpoint_dir`,
      `run.keep_checkpoint` (`checkpoint=` names the checkpoint, kept),
      `run.serve` (`monitor=`) and `video`. `inputs.style_scale` as above;
      `inputs.init` other than a keyword names an image file to read;
      `save.save_iter` paces `callback`.
    weights: loaded Weights, or the path of a converted .npz; for params
      made in memory (random_scaled_params),
      `nst_jax.Weights.from_params(params, convention)`. None: as
      `nst_jax.run`, `config.model.weights`, else $NST_JAX_WEIGHTS, else the
      default location (downloaded there on first use); an error names
      which of these the path came from.
    callback: called as callback(iteration, rgb) with the current RGB
      images ([N, H, W, 3] at the current scale, as they would be saved;
      [1, H, W, 3] for one [H, W, 3] content)
      where the file pipeline saves an intermediate image: at each multiple
      of `config.save.save_iter` iterations of a scale except the scale's
      last iteration (its result is the return value, or the next scale's
      start) and one where the scale stopped converged; and when
      `should_stop` or a signal stops the run. So save_iter 2 of 4 iterations calls it
      at 2 only. `iteration` counts on across scales.
    checkpoint: a checkpoint path (a NAME.ckpt directory; one image only), written every
      `config.run.checkpoint_every` iterations, at the end of each scale and
      when stopped, and kept after the run (to extend it with more
      iterations). With `config.run.resume` the run continues from it (a
      missing one is refused). Without it, as on the command line: a new
      path is created; a finished run's checkpoint there is replaced; an
      unfinished one (an interrupted run) is refused, naming
      `config.run.resume=True` or another path. Anything else there is
      refused and left as it is: a directory or file nst-jax did not write,
      a link, a missing folder.
    should_stop: polled after every iteration; True (or an int) saves the
      checkpoint (if `checkpoint` is given), then raises Interrupted, whose
      message names what was saved and says "stopped by should_stop" (an int
      from 1 to 64, a signal number your handler caught, is named as that
      signal instead; False, 0 or None go on, anything else is refused).
      Ctrl-C (SIGINT), SIGTERM and SIGHUP do the same, as on the command line, when stylize
      is called from the main thread: for the run, a handler of its own
      turns the first into that stop (at the next iteration's poll; "nothing
      was saved" without `checkpoint`), a second raises KeyboardInterrupt
      at once, and the previous handlers come back after the run, also
      after an error. Called from another thread, stylize leaves signals
      alone (Python runs handlers on the main thread only): use should_stop.
    content_mask: [H, W] or [N, H, W] in [0, 1]: weight of the content loss
      per pixel (None: 1 everywhere).
    style_masks: [S, H, W] or [N, S, H, W] in [0, 1], one per style: where
      each style applies (guided Grams, Gatys et al. 2017).
    init_image: RGB start image, [H', W', 3] or [N, H', W', 3] (one per
      content image; another batch size is refused), resized to the content
      (bicubic) and used whatever `config.inputs.init` says: it replaces
      'content', 'random' and 'gray' too. None: `config.inputs.init` decides,
      and a value other than those three is read as an image file. With
      several scales it starts the coarsest; each finer scale starts from the
      previous result.
    record: a dict to fill with what happened, also when a stop or an error
      ends the run (what ran until then): 'scales' (per stage run: size,
      'iterations' done at the stage in all, 'start' where this call began
      (after a resume), 'budget', why it 'stopped', compile and run seconds)
      and 'history': entries {'scale', 'iteration', 'time_s', and every loss
      term}, where 'iteration' k holds the losses of the image after k
      updates (numbered across scales): each stage's start image, every
      `config.run.print_iter` updates and each stage's result (scored once
      more; after a stop before a stage's end, the last image read
      instead). For a batch of contents ([N, H, W, 3]) each
      loss term is a list of N values, one per image; for one [H, W, 3]
      content a float.
    monitor: a live view (nst_jax.engine.preview.Preview, or anything with its
      `due` and `update`), shown image 0; never waited for.
    loss_fn: the per-image loss (nst_jax.core.objective.objective; see update_step);
      its aux must hold 'content', 'style' and 'tv', which the run logs.

  Returns:
    RGB float32 in [0, 1] with the leading shape of `content`.

  Raises:
    ImageError: an image smaller than the layers need at the coarsest scale.
  """
  cfg = _config(config)
  _check_hooks(callback, should_stop, record)
  if cfg.run.compile_cache != 'auto':  # asked for: a research program's JAX is its own
    compile_cache.use(cfg.run.compile_cache)
  if isinstance(weights, Mapping):
    raise errors.ConfigError(
      'weights is a params dict, which does not say its input convention; pass '
      'nst_jax.Weights.from_params(params, convention), the Weights (nst_jax.get_weights(path)) '
      'or the path of the .npz'
    )
  if checkpoint is not None:
    inputs_lib.checkpoint_argument(checkpoint, resume=cfg.run.resume)
  if cfg.run.resume and checkpoint is None:
    raise errors.ConfigError(
      'config.run.resume is set but no checkpoint= names the file to continue; pass checkpoint= '
      'or leave config.run.resume False'
    )
  if weights is None:  # as nst_jax.run: model.weights, else $NST_JAX_WEIGHTS, else the default
    w = weights_lib.for_model(cfg.model)
  else:
    w = weights_lib.as_weights(weights, urls=cfg.model.weights_url)
  weight_checks.vgg19_sized(w.params, 'stylize')  # trial 58 T58-7
  rows = _rows(cfg, content, style, content_mask, style_masks, init_image, checkpoint)
  squeeze = np.ndim(content) == 3  # after _rows' checks: a ragged list is numpy's ValueError
  n = len(rows)
  height, width = rows[0].content.shape[:2]
  cfg = cfg.replace(inputs=cfg.inputs.replace(width=width))
  # The file pipeline's check (every row has row 0's sizes): an image smaller
  # than the deepest layer needs would otherwise fail later as a non-finite loss.
  inputs_lib.check_size(cfg, rows[0], larger="image size (stylize runs at the arrays' size)")
  layout = runner.layout_for(cfg, height, n)
  if cfg.run.memory_limit is not None:  # asked for: plan as a run from files does
    cfg = memory_lib.fit(height, width, config=cfg, batch=n, can_split=False)
  # A jobs layout pads the batch to a multiple of the devices: the extra rows
  # repeat image 0 (same shapes and styles), are never returned, and write no
  # checkpoint.
  rows.update({k: dataclasses.replace(rows[0], checkpoint=None) for k in range(n, layout.n_rows)})
  engine = runner.make_engine(cfg, w, layout, loss_fn=loss_fn)
  try:
    resume = runner.resume_from(
      cfg, None if checkpoint is None else Path(checkpoint), required=True
    )
  except errors.ResumeMismatch as e:
    raise _in_stylize_words(e) from None
  history = hooks_lib.History(cfg.run.print_iter, range(n))

  def on_intermediate(iteration, images):
    if callback is not None:
      callback(iteration, np.stack([images[k] for k in sorted(images)]))

  scales = {} if record is not None else None
  # As the command line: the first signal stops the loop, which saves first.
  with signals.stop_on_signals(interrupt_again=True) as signalled:
    watch = engine_lib.Watch.of_run(
      cfg.run,
      save_iter=cfg.save.save_iter,
      on_intermediate=on_intermediate,
      monitor=monitor,
      should_stop=lambda: _asked(should_stop) or signalled(),
      history=history,
      resume_as='config.run.resume=True',  # as the docs and the refusal above name it
    )
    try:
      results = engine.run(rows, real=tuple(range(n)), watch=watch, resume=resume, record=scales)
    except errors.ResumeMismatch as e:
      raise _in_stylize_words(e) from None
    finally:
      if record is not None:  # a stop or an error keeps what ran
        record['scales'] = scales.get('scales', [])
        record['history'] = _history(history.history, n, batched=not squeeze)
  out = np.stack([results[k] for k in range(n)]).astype(np.float32)
  return out[0] if squeeze else out
