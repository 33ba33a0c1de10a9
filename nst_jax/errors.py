"""Exceptions that mean "the user asked for something that cannot work".

Every `NstError` message is one line that names the problem and how to fix it;
`main.py` and `convert_weights.py` print it and exit non-zero without a
traceback. Anything else that escapes is a bug and keeps its traceback.
"""


class NstError(Exception):
  """A user error: bad input, missing file, mismatched weights, bad setting."""


class ConfigError(NstError, ValueError):
  """A setting is out of range or names something that does not exist."""


class ImageError(NstError):
  """An image file cannot be read or written."""


class WriteError(NstError):
  """A file could not be written (disk full, I/O error); nothing was replaced."""


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


class Interrupted(NstError):
  """A run stopped on a signal after saving its checkpoint and image.

  Attributes:
    exit_code: 128 + the signal number, the shell's convention.
  """

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


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
