"""Exceptions that mean "the user asked for something that cannot work".

Every `NstError` message is one line that names the problem and how to fix it;
`main.py` and `convert_weights.py` print it and exit non-zero without a
traceback. Anything else that escapes is a bug and keeps its traceback.
`printable` keeps a file name with a newline in it from breaking that line
(the image, jobs and video loaders pass the names they report through it).
`unknown_keywords` is the one refusal of a keyword a function or settings
class does not take: it names the keyword and the closest one it does
(`keywords_checked` applies it to a function). `in_callers_words` is a
message as the caller reads it where the library itself shows it (the live
preview page): `spoken_as` lets the command line put its flags in there.
"""

from collections.abc import Callable, Iterable
import contextlib
import contextvars
import difflib
import errno
import functools
import inspect
import os
from pathlib import Path


class NstError(Exception):
  """A user error: bad input, missing file, mismatched weights, bad setting."""


class ConfigError(NstError, ValueError):
  """A setting is out of range or names something that does not exist."""


class ArgumentError(NstError, TypeError):
  """An argument is missing, unknown, or of another kind than the function takes.

  A TypeError, as Python's own for a missing or unexpected argument, so
  `except TypeError` keeps working.
  """


class ImageError(NstError):
  """An image file cannot be read or written."""


class WriteError(NstError):
  """A file could not be written (disk full, I/O error); nothing was replaced."""


class FileAppeared(WriteError):
  """A file appeared at a name the run planned to write while it ran: someone's, kept.

  Attributes:
    path: where (None where not known).
  """

  def __init__(self, message: str, path: os.PathLike | None = None):
    super().__init__(message)
    self.path = None if path is None else Path(path)


class WeightsError(NstError):
  """A weights file is missing, malformed, or does not fit the network."""


class DownloadError(WeightsError):
  """Fetching the published weights failed (offline, HTTP error, bad hash).

  Attributes:
    reason: a few words on why, for a list of mirrors that all failed.
  """

  def __init__(self, message: str, reason: str = ''):
    super().__init__(message)
    self.reason = reason or message


class ResumeMismatch(NstError):
  """A checkpoint was written by a run with other settings or other inputs.

  The message speaks to the file pipeline (config fields, files); `stylize`
  words it again for its own arguments from these attributes.

  Attributes:
    path: the checkpoint.
    setting: what differs first: a StyleConfig field ('inputs.width') or an
      input ('content_pixels', 'style_pixels', 'mask_pixels', 'init_pixels', 'weights_hash',
      'term_weights').
    saved, now: the field's values as short JSON text ('' for an input,
      which is compared by digest; 'none' for the side without one).
    held: for fewer 'schedule.iterations' than the checkpoint holds, what
      it holds, in words ('110 of 400 iterations, more than
      schedule.iterations 30'); else ''.
  """

  def __init__(
    self, message: str, *, path: str, setting: str, saved: str = '', now: str = '', held: str = ''
  ):
    super().__init__(message)
    self.path, self.setting, self.saved, self.now = path, setting, saved, now
    self.held = held


class Interrupted(NstError):
  """A run stopped on a signal after saving its checkpoint and image.

  Attributes:
    exit_code: 128 + the signal number, the shell's convention (1 for a
      stop asked without a signal, `signum` None: stylize's should_stop).
  """

  def __init__(self, message: str, signum: int | None):
    super().__init__(message)
    self.exit_code = 1 if signum is None else 128 + signum


class NonFinite(NstError):
  """The loss became NaN or infinite.

  Attributes:
    iteration: the iteration (numbered across scales) whose loss it was.
  """

  def __init__(self, iteration: int, message: str = ''):
    super().__init__(
      message
      or f'the loss became non-finite at iteration {iteration}; lower the weights or the '
      'learning rate'
    )
    self.iteration = iteration


def counted(n: int, noun: str) -> str:
  """'1 value', '2 values': a count and its noun, plural unless 1."""
  return f'{n} {noun}{"s" * (n != 1)}'


def gigabytes(*sizes: int | None) -> list[str]:
  """Byte counts as '0.9 GB' ('unknown' for None), with up to 3 decimals where unequal ones match.

  0.946e9 and 0.945e9 both round to '0.9 GB', which would say that a run
  needing the first does not fit in the second: they read '0.946 GB' and
  '0.945 GB'.
  """
  known = {s for s in sizes if s is not None}
  for digits in (1, 2, 3):
    text = {s: f'{s / 1e9:.{digits}f} GB' for s in known}
    if len(set(text.values())) == len(known):
      break
  return [text.get(s, 'unknown') for s in sizes]


def write_failure(path: os.PathLike, e: BaseException, why: str) -> str:
  """'could not write PATH: WHY; nothing was replaced: FIX', the fix by the error's errno.

  Only a full disk is told to free space (trial 20: a read-only file system
  and a folder replaced by a file were too). `e`'s errno, or its cause's
  (orbax wraps the OSError), picks the fix; without one, a full disk is
  the likely cause of a failed write.
  """
  code = getattr(e, 'errno', None) or getattr(e.__cause__, 'errno', None)
  folder = os.path.dirname(os.fspath(path)) or '.'
  if code in (errno.ENOTDIR, errno.EEXIST, errno.ENOENT) and not os.path.isdir(folder):
    why = f'its folder {printable(folder)} is gone or is not a folder'
    fix = 'make it or choose another place'
  elif code == errno.EEXIST:  # something took the name meanwhile
    fix = 'move it away or choose another place'
  elif code == errno.EROFS:
    fix = 'choose another place (a read-only file system)'
  elif code in (errno.EACCES, errno.EPERM) and os.path.lexists(path) and os.access(folder, os.W_OK):
    fix = 'the file there may not be replaced (immutable, or protected): move it away or choose '
    fix += 'another place'  # trial 41: 'make . writable', of a writable folder
  elif code in (errno.EACCES, errno.EPERM):
    fix = f'make {printable(folder)} writable or choose another place'
  elif code in (errno.ENOSPC, errno.EDQUOT, None):
    fix = 'free space or choose another place'
  else:
    fix = 'choose another place'
  return f'could not write {printable(path)}: {why}; nothing was replaced: {fix}'


def not_a_file(path: str | os.PathLike) -> str:
  """Why `path` (not a regular file) cannot be read as one: 'does not exist', 'is a directory'
  or 'is not a regular file (a pipe, socket or device)', which reading could block on."""
  if os.path.isdir(path):
    return 'is a directory'
  return (
    'is not a regular file (a pipe, socket or device)'
    if os.path.exists(path)
    else ('does not exist')
  )


def printable(path: str | bytes | os.PathLike) -> str:
  """A path as it goes into a one-line message.

  A name whose every character prints is returned as it is. Otherwise (a
  newline, a tab, or a byte that is not UTF-8, which Python keeps as a lone
  surrogate) it is returned as Python's repr, quoted and escaped, e.g.
  'a\\nb.png': still one line, still unambiguous, and safe to print.

  Args:
    path: a file name: a string, bytes (decoded as the file system does) or a
      path object.

  Returns:
    The name, quoted and escaped only when it must be.
  """
  text = os.fspath(path)
  if isinstance(text, bytes):
    text = os.fsdecode(text)
  return text if text.isprintable() else repr(text)


def unknown_keywords(
  owner: str,
  given: Iterable[str],
  valid: Iterable[str],
  *,
  suggest: Callable[[str], str] = repr,
  otherwise: str = '',
) -> None:
  """Raises ArgumentError naming the first of `given` not in `valid`, and its closest valid name.

  Python's own TypeError ("got an unexpected keyword argument") names the
  typo only; this names the fix as well (difflib's closest match, or the
  valid names when none is close).

  Args:
    owner: how the caller is written, e.g. 'LossConfig' or 'make_targets'.
    given: the keywords passed.
    valid: the keywords `owner` takes.
    suggest: how to write a valid name in the message (e.g. with its group).
    otherwise: the fix when no name is close ('' lists `valid`).
  """
  valid = list(valid)
  unknown = [name for name in given if name not in valid]
  if not unknown:
    return
  name = unknown[0]
  # A slip of a letter or two ('style_weights') first; then a valid name with a word added
  # ('style_image' for 'style'), before difflib's closest, which took 'style_masks' (trial 54
  # T54-8: the picture would have gone in as masks; trial 56: the stem alone took 'style' for
  # 'style_weights').
  stems = [v for v in valid if name.startswith(f'{v}_') or name.endswith(f'_{v}')]
  close = (
    difflib.get_close_matches(name, valid, n=1, cutoff=0.85)
    or sorted(stems, key=len)[-1:]
    or difflib.get_close_matches(name, valid, n=1)
  )
  if close:
    fix = f'did you mean {suggest(close[0])}?'
  else:
    fix = otherwise or f'it takes {", ".join(valid)}'
  raise ArgumentError(f'{owner} got an unknown keyword {name!r}; {fix}')


def keywords_checked(fn: Callable | None = None, *, known: Callable | None = None) -> Callable:
  """`fn`, refusing an unknown keyword with `unknown_keywords` before Python's TypeError would.

  `known(name)`: the fix for an unknown keyword that means something elsewhere (a setting given
  to `stylize`: trial 58 T58-3, 'style_weight' was told 'style', the image), or None.
  """
  if fn is None:
    return functools.partial(keywords_checked, known=known)
  kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  valid = [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]

  @functools.wraps(fn)
  def checked(*args, **kwargs):
    for name in kwargs:
      if name not in valid and known is not None and (fix := known(name)):
        raise ArgumentError(f'{fn.__name__} got an unknown keyword {name!r}; {fix}')
    unknown_keywords(fn.__name__, kwargs, valid)
    return fn(*args, **kwargs)

  return checked


# How the caller reads the library's messages: identity for Python, the
# flags' names for main.py (nst_jax.cli.spelling.for_command_line).
_WORDS: contextvars.ContextVar[Callable[[str], str] | None] = contextvars.ContextVar(
  'nst_jax_words', default=None
)


@contextlib.contextmanager
def spoken_as(words: Callable[[str], str]):
  """Within the block, `in_callers_words` rewrites messages with `words`."""
  token = _WORDS.set(words)
  try:
    yield
  finally:
    _WORDS.reset(token)


def in_callers_words(message: str) -> str:
  """`message` as the caller reads it where the library shows it itself.

  The terminal's error line is printed by the caller; a page the library
  serves (the live preview) says the same thing through this.
  """
  words = _WORDS.get()
  return message if words is None else words(message)
