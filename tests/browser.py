"""Headless Chromium driven over the DevTools protocol, for the preview test.

One page, kept open for the whole test, so that what it shows later comes
from its own script updating it, not from a reload. Needs Debian's
`chromium` (installed by .ci/run when missing) and `websocket-client`.
"""

import base64
import itertools
import json
from pathlib import Path
import shutil
import subprocess
import tempfile
import time
import urllib.request

import websocket

CHROMIUM_NAMES = ('chromium', 'chromium-browser', 'google-chrome')


def find_chromium() -> str | None:
  for name in CHROMIUM_NAMES:
    path = shutil.which(name)
    if path:
      return path
  return None


class Browser:
  """A headless Chromium with one page; `call` sends a DevTools command."""

  def __init__(self, executable: str, *, width: int = 1000, height: int = 1200):
    # Chromium's helper processes may still write the profile for a moment
    # after the browser exits: a failed clean-up is no test failure.
    self._profile = tempfile.TemporaryDirectory(prefix='nst-chromium-', ignore_cleanup_errors=True)
    self._process = subprocess.Popen(
      [
        executable,
        '--headless=new',
        '--no-sandbox',  # CI runs as root, where Chromium's sandbox cannot start
        '--disable-gpu',
        '--no-first-run',
        '--remote-debugging-port=0',
        f'--user-data-dir={self._profile.name}',
        f'--window-size={width},{height}',
        'about:blank',
      ],
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    port_file = Path(self._profile.name) / 'DevToolsActivePort'
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
      if time.monotonic() > deadline or self._process.poll() is not None:
        self.close()
        raise RuntimeError('headless Chromium did not start')
      time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list', timeout=10) as r:
      targets = json.load(r)
    page = next(t for t in targets if t['type'] == 'page')
    self._ws = websocket.create_connection(
      page['webSocketDebuggerUrl'], timeout=30, suppress_origin=True
    )
    self._ids = itertools.count(1)

  def call(self, method: str, **params) -> dict:
    """Sends one command and returns its result (events are skipped)."""
    message_id = next(self._ids)
    self._ws.send(json.dumps({'id': message_id, 'method': method, 'params': params}))
    while True:
      reply = json.loads(self._ws.recv())
      if reply.get('id') == message_id:
        if 'error' in reply:
          raise RuntimeError(f'{method}: {reply["error"]}')
        return reply['result']

  def evaluate(self, expression: str):
    result = self.call('Runtime.evaluate', expression=expression, returnByValue=True)
    return result['result'].get('value')

  def wait_for(self, expression: str, timeout: float = 60.0):
    """Polls a JavaScript expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      value = self.evaluate(expression)
      if value:
        return value
      time.sleep(0.1)
    raise TimeoutError(f'still false after {timeout} s: {expression}')

  def screenshot(self, element_id: str | None = None) -> bytes:
    """PNG of the viewport, or of one element's box."""
    params = {'format': 'png'}
    if element_id is not None:
      box = self.evaluate(
        f'(() => {{ const r = document.getElementById({element_id!r}).getBoundingClientRect();'
        ' return [r.x, r.y, r.width, r.height]; })()'
      )
      params['clip'] = dict(zip(('x', 'y', 'width', 'height'), box, strict=True)) | {'scale': 1}
    return base64.b64decode(self.call('Page.captureScreenshot', **params)['data'])

  def close(self) -> None:
    ws = getattr(self, '_ws', None)
    if ws is not None:
      ws.close()
    self._process.terminate()
    try:
      self._process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self._process.kill()
      self._process.wait()
    self._profile.cleanup()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
