"""Live preview: a page on 127.0.0.1 that follows a run (`--serve PORT`).

The page (`/`) polls `/state?since=N` (JSON: status, iteration, losses, and
the loss history from point N on, so each poll carries only what is new) and
swaps in `/image.png` when a newer image exists, so it updates without
reloading; it draws the loss curve itself (SVG) from the history. The run
never waits for the page: the loop hands over a copy of the image at most
every `interval_s` (`due`, `update`), under a lock held for microseconds, and
the server's own threads encode the PNG when a page asks for it.

Only 127.0.0.1 is bound: the page shows the user's images, so it is not
offered to the network.
"""

from collections.abc import Mapping
import contextlib
import http.server
import io
import json
import math
from pathlib import Path
import sys
import threading
import time
from typing import Any
import urllib.parse

import numpy as np
from PIL import Image

from nst_jax import errors
from nst_jax.io import images as image_lib

HOST = '127.0.0.1'
# How often the loop hands the page a new image (and the page polls): the
# copy and the host sync cost a few ms, so twice a second is free.
DEFAULT_INTERVAL_S = 0.5
# The terms the page plots; the history keeps only these (the per-layer
# terms are in the current losses).
CURVES = ('total', 'content', 'style', 'tv')
# A page that polled within this long counts as watching; at the end the
# process waits (up to `linger_s`) until a watching page has the final image.
WATCHING_S = 3.0
DEFAULT_LINGER_S = 5.0

# The page: one self-contained file (no external scripts, fonts or styles).
_PAGE_FILE = Path(__file__).with_name('preview.html')


class Preview:
  """Serves the live preview page while a run goes on.

  Args:
    port: TCP port on 127.0.0.1; 0 = any free port (see `url`).
    title: shown in the page's heading (the output's name, say).
    interval_s: at most one image update per interval (`due`).

  Raises:
    NstError: the port cannot be bound (in use, or privileged).
  """

  def __init__(self, port: int, *, title: str = '', interval_s: float = DEFAULT_INTERVAL_S):
    self.interval_s = interval_s
    self.pending: tuple[np.ndarray, str] | None = None  # a batch's shown result, until its end
    self._lock = threading.Lock()
    self._last_update = -math.inf
    self._t0: float | None = None
    self._state: dict[str, Any] = {
      'status': 'starting',
      'iteration': 0,
      'total': 0,
      'scale': 1,
      'scales': 1,
      'rate': 0.0,
      'losses': {},
      'history': [],
      'version': 0,
      'output': '',
      'message': '',
    }
    self._image: np.ndarray | None = None
    self._png: tuple[int, bytes] = (0, b'')
    self._last_poll = -math.inf
    self._served_version = 0
    self._end_seen = False
    page = (
      _PAGE_FILE.read_text()
      .replace('__TITLE__', _html_escape(title or 'live preview'))
      .replace('__INTERVAL_MS__', str(round(interval_s * 1000)))
      .encode()
    )
    preview = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # noqa: N802 (http.server's name)
        route = self.path.split('?', 1)[0]
        if route == '/':
          self._send(200, 'text/html; charset=utf-8', page)
        elif route == '/state':
          query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
          since = query.get('since', ['0'])[0]
          since = int(since) if since.isdigit() else 0
          self._send(200, 'application/json', preview._state_json(since))
        elif route == '/image.png':
          body = preview._image_png()
          self._send(200, 'image/png', body) if body else self._send(404, 'text/plain', b'none')
        else:
          self._send(404, 'text/plain', b'not found')

      def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header('Content-Type', kind)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Cache-Control', 'no-store')
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, format, *args):  # noqa: A002
        pass  # the run's log is for the run

    try:
      self._server = http.server.ThreadingHTTPServer((HOST, port), Handler)
    except OSError as e:
      raise errors.NstError(
        f'cannot serve the preview on port {port} ({e.strerror}); choose another '
        'run.serve port, or 0 for any free port'
      ) from None
    self._server.daemon_threads = True
    self._thread = threading.Thread(
      target=self._server.serve_forever, name='nst-jax-preview', daemon=True
    )
    self._thread.start()

  @property
  def url(self) -> str:
    return f'http://{HOST}:{self._server.server_address[1]}/'

  # The run's side.

  def begin(self, *, total: int, scales: int) -> None:
    """The run starts: `total` iterations over all `scales`."""
    with self._lock:
      self._state.update(status='running', total=total, scales=scales)

  def due(self) -> bool:
    """True when the page should get a new image (at most once per interval)."""
    return time.monotonic() - self._last_update >= self.interval_s

  def update(
    self, iteration: int, losses: Mapping[str, float], rgb: np.ndarray, *, scale: int = 1
  ) -> None:
    """The current state: 1-based iteration over all scales, losses, RGB [H, W, 3]."""
    now = time.monotonic()
    self._last_update = now
    pixels = image_lib.to_uint8(rgb)
    current = {'iteration': iteration, **{k: float(v) for k, v in losses.items()}}
    point = {k: current[k] for k in ('iteration', *CURVES) if k in current}
    with self._lock:
      if self._t0 is None:
        self._t0, self._it0 = now, iteration
      elif iteration > self._it0:
        self._state['rate'] = (iteration - self._it0) / (now - self._t0)
      self._image = pixels
      self._state['history'].append(point)
      self._state.update(
        iteration=iteration,
        scale=scale,
        losses=current,
        version=self._state['version'] + 1,
      )

  def finish(self, rgb: np.ndarray, output: str = '') -> None:
    """The run is done: the final image (as saved) and where it went."""
    pixels = image_lib.to_uint8(rgb)
    with self._lock:
      self._image = pixels
      self._state.update(
        status='done',
        iteration=self._state['total'],
        output=str(output),
        version=self._state['version'] + 1,
      )

  def fail(self, message: str) -> None:
    with self._lock:
      self._state.update(status='failed', message=message)

  def close(self, linger_s: float = DEFAULT_LINGER_S) -> None:
    """Stops serving; first waits (up to `linger_s`) for a watching page to get the end."""
    deadline = time.monotonic() + linger_s
    while time.monotonic() < deadline:
      with self._lock:
        watching = time.monotonic() - self._last_poll < WATCHING_S
        delivered = self._end_seen and self._served_version >= self._state['version']
      if not watching or delivered:
        break
      time.sleep(0.05)
    self._server.shutdown()
    self._server.server_close()
    self._thread.join(timeout=5)

  # The server's side (its threads).

  def _state_json(self, since: int = 0) -> bytes:
    """The state, with the history from point `since` on; encoded outside the lock."""
    with self._lock:
      self._last_poll = time.monotonic()
      if self._state['status'] in ('done', 'failed'):
        self._end_seen = True
      history = self._state['history']
      state = dict(self._state, history=history[since:], history_length=len(history))
    return json.dumps(state).encode()

  def _image_png(self) -> bytes:
    with self._lock:
      self._last_poll = time.monotonic()
      version, pixels = self._state['version'], self._image
      if self._png[0] == version:
        self._served_version = version
        return self._png[1]
    if pixels is None:
      return b''
    buffer = io.BytesIO()
    # Level 1: a fast encode matters more than bytes on a loopback page.
    Image.fromarray(pixels).save(buffer, format='PNG', compress_level=1)
    body = buffer.getvalue()
    with self._lock:
      self._png = (version, body)
      self._served_version = max(self._served_version, version)
    return body


def _html_escape(text: str) -> str:
  return text.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')


@contextlib.contextmanager
def serving(port: int | None, *, title: str):
  """The live preview page on `port` for the duration of the block (None: none)."""
  if port is None:
    yield None
    return
  preview = Preview(port, title=title)
  print(f'live preview: {preview.url}', file=sys.stderr, flush=True)
  linger = DEFAULT_LINGER_S
  try:
    yield preview
  except BaseException as e:
    why = errors.in_callers_words(str(e)) if str(e) else type(e).__name__
    preview.fail(f'failed: {why}')  # as the terminal's line says it (trial 32 W4)
    linger = 1.0  # let a watching page see why, but do not hold up the exit
    raise
  finally:
    preview.close(linger_s=linger)
