"""Fetching the published weights file: mirrors tried in order, every one checked.

`fetch(urls, directory, md5=...)` tries each URL in turn and keeps the first
file whose MD5 is the published one; a dead link, an HTTP error or a wrong
file moves on to the next. Dead links are the most common failure in the
classic tools' trackers, so the list is extendable: `--weights_url` (main.py
and the converter) and $NST_JAX_WEIGHTS_URL put a user's own mirrors first.
Every download resumes an interrupted one and is renamed into place only
when complete and verified.
"""

from collections.abc import Sequence
import hashlib
import http.client
import os
from pathlib import Path
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from nst_jax import errors
from nst_jax.io import weight_checks
from nst_jax.io import weight_formats
from nst_jax.io import weights as weights_lib

# Extra mirrors, separated by spaces or commas, tried before the published ones.
URL_ENV = 'NST_JAX_WEIGHTS_URL'


def mirrors(extra: Sequence[str] = ()) -> list[str]:
  """The URLs to try, in order: `extra`, then $NST_JAX_WEIGHTS_URL's, then the published."""
  env = os.environ.get(URL_ENV, '').replace(',', ' ').split()
  seen, out = set(), []
  for url in [*extra, *env, *weights_lib.KERAS_MIRRORS]:
    if url and url not in seen:
      seen.add(url)
      out.append(url)
  return out


def _format_bytes(n: float) -> str:
  return f'{n / 1e6:.1f} MB'


class _Progress:
  """Bytes, rate and ETA on stderr: a redrawn line on a terminal, else every 10%."""

  def __init__(self, label: str, total: int | None, start: int, stream=None):
    self.stream = stream or sys.stderr
    self.label, self.total, self.start = label, total, start
    self.t0 = time.monotonic()
    self.tty = self.stream.isatty()
    self.last_decile = -1
    self.last_draw = 0.0

  def update(self, done: int, final: bool = False) -> None:
    now = time.monotonic()
    rate = (done - self.start) / max(now - self.t0, 1e-9)
    if self.total:
      eta = (self.total - done) / rate if rate > 0 else float('inf')
      msg = (
        f'{self.label}: {_format_bytes(done)} of {_format_bytes(self.total)}, '
        f'{_format_bytes(rate)}/s, ETA {eta:.0f} s'
      )
      decile = int(10 * done / self.total)
    else:
      msg = f'{self.label}: {_format_bytes(done)}, {_format_bytes(rate)}/s'
      decile = int(done // 10_000_000)
    if self.tty:
      if final or now - self.last_draw > 0.2:
        self.stream.write('\r' + msg + ('\n' if final else ''))
        self.stream.flush()
        self.last_draw = now
    elif final or decile > self.last_decile:
      self.stream.write(msg + '\n')
      self.stream.flush()
      self.last_decile = decile


def download(
  url: str,
  dest: str | os.PathLike,
  *,
  md5: str | None,
  timeout: float = 10.0,
  progress: bool = True,
) -> Path:
  """Downloads `url` to `dest`, resuming a previous partial download.

  Bytes go to `dest + '.part'`; only a complete file whose MD5 matches is
  renamed to `dest`, so `dest` never exists half-written or corrupt. An
  interrupted transfer keeps the `.part` file and the next call resumes it
  with an HTTP Range request (or restarts if the server ignores ranges). A
  hash mismatch deletes the `.part`.

  Args:
    url: http(s) URL.
    dest: final path.
    md5: expected MD5 hex digest (the published hash); None skips the check.
    timeout: seconds to wait for a connection or for data.
    progress: report bytes, rate and ETA on stderr.

  Returns:
    dest as a Path.

  Raises:
    DownloadError: offline, HTTP error, early close, or hash mismatch.
  """
  dest = Path(dest)
  part = dest.with_name(dest.name + '.part')
  have = part.stat().st_size if part.exists() else 0
  if urllib.parse.urlparse(url).scheme not in ('http', 'https'):
    raise errors.DownloadError(
      f'{url} is not an http(s) URL; pass an http:// or https:// URL', reason='not http(s)'
    )
  # The scheme is checked just above, so no file: or custom-scheme opens.
  request = urllib.request.Request(url, headers={'User-Agent': 'nst-jax'})  # noqa: S310
  if have:
    request.add_header('Range', f'bytes={have}-')
  try:
    response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
  except urllib.error.HTTPError as e:
    if e.code == 416 and have:  # our partial file is not a prefix; start over
      part.unlink()
      return download(url, dest, md5=md5, timeout=timeout, progress=progress)
    raise errors.DownloadError(
      f'download of {url} failed: HTTP {e.code} {e.reason}; check the URL or try again later',
      reason=f'HTTP {e.code} {e.reason}',
    ) from None
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, 'reason', e)
    raise errors.DownloadError(
      f'cannot download {url} ({reason}); on a machine with internet access '
      f'fetch that file (MD5 {md5}), copy it to {dest} and run: '
      f'{weight_formats.convert_call(dest)}',
      reason=str(reason),
    ) from None

  dest.parent.mkdir(parents=True, exist_ok=True)  # only once the server answers
  with response:
    resumed = response.status == 206
    if not resumed:
      have = 0  # the server sent the whole file
    length = response.headers.get('Content-Length')
    total = have + int(length) if length is not None else None
    digest = hashlib.md5()  # noqa: S324  # the published checksum is MD5
    if resumed:
      with open(part, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
          digest.update(chunk)
    meter = _Progress(f'downloading {dest.name}', total, have) if progress else None
    done = have
    try:
      with open(part, 'ab' if resumed else 'wb') as f:
        while chunk := response.read(1 << 20):
          f.write(chunk)
          digest.update(chunk)
          done += len(chunk)
          if meter:
            meter.update(done)
    except (OSError, http.client.HTTPException) as e:
      raise errors.DownloadError(
        f'download of {url} stopped at {_format_bytes(done)} ({e}); run again to resume',
        reason=f'stopped at {_format_bytes(done)}',
      ) from None
    if meter:
      meter.update(done, final=True)
  if total is not None and done < total:
    raise errors.DownloadError(
      f'download of {url} stopped at {done} of {total} bytes; run again to resume',
      reason=f'stopped at {done} of {total} bytes',
    )
  if md5 is not None and digest.hexdigest() != md5:
    part.unlink()
    raise errors.DownloadError(
      f'{url} has MD5 {digest.hexdigest()}, expected {md5}; the download was '
      'corrupt and has been deleted, run again',
      reason=f'a file with MD5 {digest.hexdigest()}, not {md5}',
    )
  os.replace(part, dest)
  return dest


def fetch(
  urls: Sequence[str],
  directory: str | os.PathLike,
  *,
  md5: str,
  timeout: float = 10.0,
  progress: bool = True,
) -> Path:
  """Downloads the Keras file into `directory` from the first mirror that serves it right.

  A file already there with the right MD5 is reused (no download).

  Returns:
    The downloaded (or reused) file.

  Raises:
    DownloadError: every mirror failed; the message names each and why (with
      one mirror, that download's own message).
  """
  raw = Path(directory) / weights_lib.KERAS_FILENAME
  if raw.is_file() and weight_checks.file_digest(raw, 'md5') == md5:
    return raw
  failures = []
  for url in urls:
    try:
      return download(url, raw, md5=md5, timeout=timeout, progress=progress)
    except errors.DownloadError as e:
      if len(urls) == 1:
        raise  # its own message says best what to do
      failures.append(f'{url} ({e.reason})')
      if progress and url != urls[-1]:
        print(f'{url} failed ({e.reason}); trying the next mirror', file=sys.stderr)
  raise errors.DownloadError(
    f'cannot download the VGG-19 weights from any mirror: {"; ".join(failures)}; on a machine '
    f'with internet access fetch {weights_lib.KERAS_FILENAME} (MD5 {md5}) from one of them, '
    f'copy it to {raw} and run: {weight_formats.convert_call(raw)}'
  )


def fetch_and_convert(
  output: str | os.PathLike = weights_lib.DEFAULT_WEIGHTS_PATH,
  urls: Sequence[str] | None = None,
  *,
  md5: str = weights_lib.KERAS_MD5,
  timeout: float = 10.0,
  progress: bool = True,
) -> Path:
  """Downloads the published Keras file beside `output` from `urls` (in order), converts it.

  A verified file already beside `output` is converted without downloading.

  Args:
    output: where the converted .npz goes.
    urls: the mirrors to try, in order; None: `mirrors()`.
    md5: the published file's MD5.
    timeout: seconds each connection may wait.
    progress: show the download's progress on stderr.

  Returns:
    output as a Path.
  """
  output = Path(output)
  urls = mirrors() if urls is None else urls
  raw = fetch(urls, output.parent, md5=md5, timeout=timeout, progress=progress)
  return weights_lib.convert_file(raw, output)
