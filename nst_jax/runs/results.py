"""Writing a run's files: each row's intermediates, result and run record, and the last line.

Single runs and batches (nst_jax.runs.runner, nst_jax.runs.batch) write
through `Results`: one output per row, its intermediates beside it, and
(with `save.record`) NAME.json, NAME.loss.png and NAME.sheet.jpg.
"""

from collections.abc import Iterator
import contextlib
import os
from pathlib import Path
import time

from absl import logging
import numpy as np

from nst_jax import config as config_lib
from nst_jax import errors
from nst_jax.engine import hooks as hooks_lib
from nst_jax.engine import schedule as schedule_lib
from nst_jax.io import atomic
from nst_jax.io import checkpoint as checkpoint_lib
from nst_jax.io import checkpoint_store
from nst_jax.io import images as image_lib
from nst_jax.io import output_names
from nst_jax.io import record as record_lib
from nst_jax.runs import output_locks
from nst_jax.runs import output_plan


def stage_iterations(cfg: config_lib.StyleConfig) -> list[int]:
  """Each scale's iterations, which number the intermediates (output_names.intermediates)."""
  return [s.iterations for s in schedule_lib.plan(cfg.inputs.width, cfg.schedule)]


class Results:
  """Writes each row's intermediates, result and run record to its own files.

  Single runs and batches both write through this: one output path per
  row, with the row's intermediates beside it and (with `cfg.save.record`)
  NAME.json, NAME.loss.png and NAME.sheet.jpg.

  Args:
    cfg: the settings (format, record) and, per row, `configs` for the record.
    weights_info: the weights' provenance, for the record.
    paths: row -> output file.
    rows: row -> the Row (its images go on the contact sheet).
    icc: row -> the content's ICC profile, or None.
    configs: row -> the settings to record for it (default: `cfg`).
  """

  def __init__(self, cfg, weights_info, paths, rows, *, icc=None, configs=None, prefix=''):
    self.cfg, self.info = cfg, weights_info
    self.paths, self.rows = dict(paths), rows
    self.icc = icc or {}
    self.configs = configs or {}
    self.prefix = prefix
    self.intermediates: dict[int, list[np.ndarray]] = {r: [] for r in self.paths}
    # Made once the plan passed under the locks: the planned intermediates
    # that exist now may be replaced (an earlier run's, or --overwrite'n);
    # any other name (one saved on a signal, or one another run wrote since)
    # is written only where no file is. A resume's record claims those the
    # interrupted run wrote (trial 24), by the plan's rule; not a user's that
    # --overwrite let be and the run never reached, nor an earlier run's
    # (trial 34: claimed by name, a later rerun replaced the user's picture).
    every, stages = cfg.save.save_iter, stage_iterations(cfg)
    there = {
      r: [i for i in output_names.intermediates(p, every, stages) if os.path.lexists(i)]
      for r, p in self.paths.items()
    }
    self.replaceable = {p for paths in there.values() for p in paths}
    own = {r: [] for r in self.paths}
    if cfg.run.resume:  # a stop's image, up to the checkpoint's iteration: claimed (trial 28)
      for r, p in self.paths.items():
        ckpt = checkpoint_lib.path_for(p, cfg.run.checkpoint_dir)
        out = output_plan.image_output(p, save_iter=every, iterations=stages, checkpoint=ckpt)
        owned = output_plan.checkpoints_own(out)[0]
        own[r] = [i for i in there[r] if i in owned]
        own[r] += [q for q in _stop_images(p, cfg.run.checkpoint_dir) if q not in own[r]]
    self.replaceable |= {p for paths in own.values() for p in paths}
    self.saved = {r: [p.name for p in paths] for r, paths in own.items()}
    # The result and record files there now are this output's (the plan said so); any other is
    # written only where no file is by then (trial 34: put there while the run ran, replaced).
    for p in self.paths.values():
      files = [Path(p), *output_names.record_files(p)]
      self.replaceable |= {q for q in files if os.path.lexists(q)}
    # What an earlier run's record claims beside each result this run replaces (trial 26).
    self.earlier = {r: output_names.claimed(p) - {Path(p)} for r, p in self.paths.items()}
    # Each as it is now: one saved over since (a user's picture, mid-run) is someone's, neither
    # replaced, deleted nor claimed (trial 36).
    self.stamps = {q: stamp(q) for q in self.replaceable.union(*self.earlier.values())}
    self.digests: dict[int, dict[str, str]] = {r: {} for r in self.paths}  # theirs, as written
    for r, p in self.paths.items():  # noted by the checkpoint's first save too (trial 36)
      checkpoint_store.expect_images(checkpoint_lib.path_for(p, cfg.run.checkpoint_dir),
                                     self.digests[r])  # fmt: skip
    self.t0 = time.perf_counter()
    self.history = hooks_lib.History(cfg.run.print_iter, list(self.paths), t0=self.t0)

  @contextlib.contextmanager
  def noting_stops(self) -> Iterator[None]:
    """On a stop, notes the images this run saved in its checkpoints, by digest: a resume
    claims them (trial 30: by name, it claimed a user's pictures), a folder leaves them out."""
    ckpts = {
      r: checkpoint_lib.path_for(p, self.cfg.run.checkpoint_dir) for r, p in self.paths.items()
    }
    try:
      yield
    except errors.Interrupted:
      for r, ckpt in ckpts.items():
        images = dict(self.digests[r])  # as written: a file put over one since is someone's
        if images:
          checkpoint_store.note_images(ckpt, images)
      raise
    finally:  # the checkpoints' saves are over: their first saves no longer note this run's
      for ckpt in ckpts.values():
        checkpoint_store.expect_images(ckpt, None)

  def _as_planned(self, path: Path) -> bool:
    """Whether `path` is as the plan (or this run's own write) left it, or gone."""
    return stamp(path) in (self.stamps.get(path), None)

  def _save(self, path, rgb, r, then=None) -> None:
    save = self.cfg.save
    path = Path(path)
    image_lib.save_image(
      path, rgb, bit_depth=save.bit_depth, quality=save.quality, icc=self.icc.get(r), then=then,
      replace=path in self.replaceable and self._as_planned(path),
    )  # fmt: skip
    self.stamps[path] = stamp(path)

  def intermediate(self, iteration: int, images: dict[int, np.ndarray]) -> list[Path]:
    """The engine's on_intermediate: <name>_<iteration>.png beside each output; those written."""
    written = []
    for r, rgb in images.items():
      path = output_names.intermediate_path(self.paths[r], iteration)
      if output_locks.busy(path):  # another run's output, not yet written (trial 36 H1b)
        logging.warning('%s%s is the output of another run, running now: the image of iteration %d'
                        ' was not saved', self.prefix, path, iteration)  # fmt: skip
        continue
      try:
        self._save(path, rgb, r)
      except errors.FileAppeared:  # someone's, there before or since (trial 34: another run's)
        logging.warning('%skept %s: the image of iteration %d was not saved', self.prefix, path,
                        iteration)  # fmt: skip
        continue
      written.append(path)
      self.replaceable.add(path)  # this run's own now (a stop's image saved at a save_iter)
      self.digests[r][path.name] = output_names.file_sha256(path)  # as written, for the record
      # And in its checkpoint, once there is one: after a kill, only noted images are the run's
      # (trial 36: by name, a resume claimed a user's picture the run had kept).
      checkpoint_store.note_images(checkpoint_lib.path_for(self.paths[r],
                                   self.cfg.run.checkpoint_dir), self.digests[r])  # fmt: skip
      if path.name not in self.saved[r]:
        self.saved[r].append(path.name)
      if self.cfg.save.record:
        self.intermediates[r].append(rgb)
      logging.info('%ssaved %s', self.prefix, errors.printable(path))
    return written

  def write(self, r: int, rgb: np.ndarray, record: dict) -> Path:
    """Saves row r's result and its run record; returns the result's path."""
    path = Path(self.paths[r])
    earlier = self.earlier.get(r, set())
    ckpt = checkpoint_lib.path_for(path, self.cfg.run.checkpoint_dir)

    def note(tmp: str) -> str:  # before it is in place: after a kill (or a file that appeared
      digest = output_names.file_sha256(tmp)  # there: trial 36), the checkpoint owns it by this
      checkpoint_store.note_result(ckpt, digest, path)  # digest, not by name (trial 43)
      return digest

    if not self.cfg.save.record:
      self._save(path, rgb, r, then=note)
      logging.info('%ssaved %s', self.prefix, errors.printable(path))
      for tail in output_names.RECORD_TAILS.values():  # an earlier record: of the image replaced
        old = output_names.derived(path, tail)
        # Not another run's result put at such a name (trial 34: deleted; its record named it).
        if (old in earlier and old.is_file() and self._as_planned(old)
            and output_names.record_naming(old) is None):  # fmt: skip
          old.unlink()  # a file only: a folder made at its name since is someone's (trial 34)
      for old in earlier:  # and the intermediates it claimed, nobody's without it (trial 28)
        if (output_names.intermediate_number(old) is not None and old.name not in self.saved[r]
            and self._as_planned(old)):  # fmt: skip
          old.unlink(missing_ok=True)
      for old in sorted(earlier):  # said, as with a record (trial 41: kept without a word)
        if old.is_file() and not self._as_planned(old) and old.name not in self.saved[r]:
          logging.warning('%skept %s: a file appeared there while the run ran', self.prefix, old)
      return path
    row = self.rows[r]
    # An earlier run's intermediates this one did not replace: still claimed, as that run's.
    before = sorted(p.name for p in earlier if output_names.intermediate_number(p) is not None
                    and p.name not in self.saved[r] and os.path.lexists(p)
                    and self._as_planned(p))  # fmt: skip
    own = [n for n in self.saved[r] if self._as_planned(path.with_name(n))]
    record = {**record, 'history': self.history.history[r], 'intermediates': own,
              'earlier_intermediates': before, 'written_sha256': self.digests[r]}  # fmt: skip
    config, seconds = self.configs.get(r, self.cfg), time.perf_counter() - self.t0

    recorded = []
    # Files saved over since the plan (a user's, mid-run) are kept, the record and figures too.
    replaceable = {p for p in self.replaceable if self._as_planned(p)}
    json_ = record_lib.paths_for(path)['json']
    earlier_record = json_.read_bytes() if json_ in replaceable and json_.is_file() else None

    def record_first(tmp: str) -> None:  # trial 28: a full disk left a result without a record
      recorded.append(note(tmp))
      recorded.append(record_lib.write(
        path, config=config, weights_info=self.info, record=record, total_s=seconds,
        content=row.content, styles=list(row.styles), result=rgb, written=tmp,
        replaceable=replaceable,
      ))  # fmt: skip

    try:
      self._save(path, rgb, r, then=record_first)
    except errors.FileAppeared:
      if len(recorded) == 2:  # at the result's name: the record just written describes none,
        if earlier_record is None:  # the earlier one still claims that run's figures (trial 43)
          recorded[1]['json'].unlink(missing_ok=True)
        else:
          atomic.write(json_, lambda tmp: Path(tmp).write_bytes(earlier_record))
      raise
    logging.info('%ssaved %s', self.prefix, errors.printable(path))
    files = record_lib.paths_for(path)
    kept = record_lib.figures(files, record['history'], [row.content, *row.styles, rgb],
                              self.intermediates[r], replaceable=replaceable)  # fmt: skip
    for figure in kept:
      logging.warning('%skept %s: a file appeared there while the run ran', self.prefix, figure)
    record_lib.note_figures(files, kept)
    return path


def stamp(path: str | os.PathLike) -> tuple | None:
  """(inode, size, mtime) of the file at `path`, or None: a file saved over it changes it."""
  try:
    st = os.lstat(path)
  except OSError:
    return None
  return st.st_ino, st.st_size, st.st_mtime_ns


def _stop_images(output: Path, checkpoint_dir: str | None) -> list[Path]:
  """The images a stopped run noted in its checkpoint, still the files it saved (by digest)."""
  noted = checkpoint_store.noted_images(checkpoint_lib.path_for(output, checkpoint_dir))
  found = [Path(output).with_name(n) for n in sorted(noted) if '/' not in n]
  return [q for q in found if q.is_file() and output_names.file_sha256(q) == noted[q.name]]


def unwritten(error: errors.WriteError, ckpt: Path) -> errors.WriteError:
  """A result that could not be written, with what its checkpoint holds and how to go on.

  A finished checkpoint gives the result on `run.resume` without iterating;
  one whose last save failed too (the same full disk) holds an earlier
  iteration, from which the resumed run goes on.
  """
  if not ckpt.exists():
    return error
  try:
    payload = checkpoint_lib.read(ckpt)
  except errors.NstError:
    return error
  if not checkpoint_lib.unfinished(payload):
    if isinstance(error, errors.FileAppeared):  # trial 41: 'move it away' read as the checkpoint
      what = errors.printable(error.path.name) if error.path else 'that file'
      return errors.WriteError(
        f'{error}; move {what} away, then continue with run.resume (the checkpoint {ckpt} is kept)'
      )
    return errors.WriteError(
      f'{error}; the checkpoint {ckpt} is kept: then continue with run.resume'
    )
  return errors.WriteError(
    f'{error}; the checkpoint {ckpt} could not be written at the end either and holds iteration '
    f'{payload["iteration"]} of scale {payload.get("scale", 0) + 1}: continue from there with '
    'run.resume'
  )


def duration(seconds: float) -> str:
  """Seconds in words: 12.3 s, 4 min 5 s, 2 h 3 min."""
  if seconds < 60:
    return f'{seconds:.1f} s'
  minutes, s = divmod(round(seconds), 60)
  return f'{minutes} min {s} s' if minutes < 60 else f'{minutes // 60} h {minutes % 60} min'


def summary(output: Path, record: dict, results: Results, *, resumed: bool = False) -> str:
  """One line at the end of a run: where, how long, how many iterations, why it stopped.

  `resumed`: the time is this process's, and so are the iterations counted
  (the record's stages count from their start before the resume too).
  """
  stages = record.get('scales', [])
  done = sum(s['iterations'] - (s.get('start', 0) if resumed else 0) for s in stages)
  why = ''
  if stages and stages[-1]['stopped'] == 'converged':
    why = (
      f' (converged after {stages[-1]["iterations"]} of {stages[-1]["budget"]} at the last scale)'
    )
  history = results.history.history[0]
  loss = f', final loss {history[-1]["total"]:.4g}' if history else ''
  where = ''
  if results.cfg.save.record:
    where = f'; run record {errors.printable(record_lib.paths_for(output)["json"])}'
  elapsed = duration(time.perf_counter() - results.t0)
  # printable: a name with a newline stays on the one success line.
  done = errors.counted(done, 'iteration') + (' since the resume' if resumed else '')
  return f'Done: {errors.printable(output)} in {elapsed}, {done}{why}{loss}{where}.'
