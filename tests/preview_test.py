"""The live preview: its server (state, image, lifetime) and the page in Chromium."""

import contextlib
import io
import json
import os
from pathlib import Path
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import browser
import numpy as np
from PIL import Image
import pytest

from nst_jax import errors
from nst_jax.engine import preview as preview_lib

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / 'content_images' / 'tubingen.jpg'
STYLE = ROOT / 'style_images' / 'starry_night.jpg'


def _get(url: str) -> tuple[int, bytes]:
  try:
    with urllib.request.urlopen(url, timeout=10) as r:
      return r.status, r.read()
  except urllib.error.HTTPError as e:
    return e.code, b''


def _state(preview) -> dict:
  return json.loads(_get(preview.url + 'state')[1])


def test_state_and_image_follow_the_updates():
  rng = np.random.default_rng(0)
  first, second, final = (rng.uniform(-0.1, 1.1, (12, 20, 3)).astype(np.float32) for _ in range(3))
  preview = preview_lib.Preview(0, title='a<b>.png', interval_s=0.2)
  try:
    status, page = _get(preview.url)
    assert status == 200 and b'nst-jax: a&lt;b&gt;.png' in page
    assert b'setInterval(poll, 200)' in page
    assert not re.search(rb'(src|href)="(https?:)?//', page)  # nothing from outside
    assert _get(preview.url + 'image.png')[0] == 404  # nothing to show yet

    preview.begin(total=40, scales=2)
    assert preview.due()
    preview.update(3, {'total': 2.5, 'content': 1.0, 'style': 1.5, 'tv': 0.0}, first, scale=1)
    assert not preview.due()  # rate-limited to one update per interval
    state = _state(preview)
    assert state['status'] == 'running' and state['iteration'] == 3 and state['total'] == 40
    assert state['version'] == 1 and state['losses']['total'] == 2.5 and state['scales'] == 2
    shown = np.asarray(Image.open(io.BytesIO(_get(preview.url + 'image.png')[1])))
    np.testing.assert_array_equal(shown, np.round(np.clip(first, 0, 1) * 255).astype(np.uint8))

    time.sleep(0.2)
    assert preview.due()
    losses = {'total': 1.25, 'content': 0.5, 'style': 0.75, 'tv': 0.0, 'style/relu1_1': 0.25}
    preview.update(25, losses, second, scale=2)
    state = _state(preview)
    assert (state['iteration'], state['scale'], state['version']) == (25, 2, 2)
    assert [h['iteration'] for h in state['history']] == [3, 25]
    assert [h['total'] for h in state['history']] == [2.5, 1.25]
    # Per-layer terms are in the current losses, the history keeps the curves only.
    assert state['losses']['style/relu1_1'] == 0.25 and 'style/relu1_1' not in state['history'][1]
    # A page that has n points asks for the rest only.
    newer = json.loads(_get(preview.url + 'state?since=1')[1])
    assert [h['iteration'] for h in newer['history']] == [25] and newer['history_length'] == 2
    assert json.loads(_get(preview.url + 'state?since=2')[1])['history'] == []
    shown = np.asarray(Image.open(io.BytesIO(_get(preview.url + 'image.png?v=2')[1])))
    np.testing.assert_array_equal(shown, np.round(np.clip(second, 0, 1) * 255).astype(np.uint8))

    preview.finish(final, 'out/a.png')
    state = _state(preview)
    assert state['status'] == 'done' and state['iteration'] == 40 and state['version'] == 3
    assert state['output'] == 'out/a.png'
    shown = np.asarray(Image.open(io.BytesIO(_get(preview.url + 'image.png?v=3')[1])))
    np.testing.assert_array_equal(shown, np.round(np.clip(final, 0, 1) * 255).astype(np.uint8))
  finally:
    t0 = time.monotonic()
    preview.close(linger_s=5.0)
  # The watching client has had the end and the final image: no lingering.
  assert time.monotonic() - t0 < 1.0
  with pytest.raises(urllib.error.URLError):
    urllib.request.urlopen(preview.url, timeout=2)


def test_close_waits_only_for_a_watching_page():
  preview = preview_lib.Preview(0)
  t0 = time.monotonic()
  preview.close(linger_s=3.0)
  assert time.monotonic() - t0 < 1.0  # nobody watching: the run does not wait

  preview = preview_lib.Preview(0)
  preview.begin(total=1, scales=1)
  _state(preview)  # a page is watching, and has not seen the end
  preview.finish(np.zeros((4, 4, 3), np.float32), 'x.png')
  t0 = time.monotonic()
  preview.close(linger_s=1.0)
  waited = time.monotonic() - t0
  assert 0.9 < waited < 3.0


def test_a_busy_port_is_a_one_line_error():
  with socket.socket() as taken:
    taken.bind(('127.0.0.1', 0))
    taken.listen()
    port = taken.getsockname()[1]
    with pytest.raises(
      errors.NstError, match=rf'port {port} .*run.serve port, or 0 for any free port'
    ):
      preview_lib.Preview(port)


def test_a_failure_shows_the_callers_words(monkeypatch):
  """Trial 32 W4: the page told a command-line user to 'continue with run.resume'."""
  from nst_jax.cli import spelling

  shown = []
  monkeypatch.setattr(preview_lib.Preview, 'fail', lambda self, message: shown.append(message))
  stop = errors.Interrupted('the checkpoint r.ckpt holds iteration 7: continue with run.resume', 15)
  for words, expected in ((None, 'run.resume'), (spelling.for_command_line, '--resume')):
    with contextlib.ExitStack() as stack:
      if words:
        stack.enter_context(errors.spoken_as(words))
      with pytest.raises(errors.Interrupted), preview_lib.serving(0, title='r.png'):
        raise stop
    assert (
      shown.pop() == f'failed: the checkpoint r.ckpt holds iteration 7: continue with {expected}'
    )
  assert errors.in_callers_words('run.resume') == 'run.resume'  # the block's words are gone


def _read_url(stream, found: dict, lines: list) -> None:
  for line in stream:
    lines.append(line)
    m = re.search(r'live preview: (http://127\.0\.0\.1:\d+/)', line)
    if m and 'url' not in found:
      found['url'] = m.group(1)
      found['event'].set()


@pytest.mark.slow
def test_live_page_in_headless_chromium(tmp_path, caffe_npz):
  executable = browser.find_chromium()
  if executable is None and os.environ.get('CI'):
    pytest.fail('no Chromium: install it with apt-get install -y chromium (.ci/run does)')
  if executable is None:  # a developer's machine: said in the summary, required in CI
    pytest.skip('no Chromium here (CI requires it): apt-get install -y chromium to run this test')
  out = tmp_path / 'out.png'
  args = [
    ROOT / 'main.py',
    '-cp',
    CONTENT,
    '-sp',
    STYLE,
    '-w',
    64,
    '-i',
    200,
    '--weights',
    caffe_npz,
    '--output',
    out,
    '--serve',
    0,
    '--norecord',
  ]
  run = subprocess.Popen(
    [sys.executable, *map(str, args)],
    stderr=subprocess.PIPE, text=True, cwd=tmp_path,
  )  # fmt: skip
  found, lines = {'event': threading.Event()}, []
  reader = threading.Thread(target=_read_url, args=(run.stderr, found, lines), daemon=True)
  reader.start()
  try:
    assert found['event'].wait(120), ''.join(lines)
    with browser.Browser(executable) as page:
      page.call('Page.navigate', url=found['url'])
      image_shown = "(() => { const i = document.getElementById('result'); return i.complete && i.naturalWidth > 0 && Number(i.dataset.version); })()"  # noqa: E501
      v1 = page.wait_for(image_shown)
      page.evaluate("window.sameDocument = 'yes'")
      shot1 = page.screenshot('result')
      text1 = page.evaluate("document.getElementById('progress-text').textContent")
      assert re.match(r'iteration \d+ / 200', text1), text1
      v2 = page.wait_for(f'(() => {{ const v = {image_shown}; return v > {v1} && v; }})()')
      shot2 = page.screenshot('result')
      a = np.asarray(Image.open(io.BytesIO(shot1)).convert('RGB'), np.float32)
      b = np.asarray(Image.open(io.BytesIO(shot2)).convert('RGB'), np.float32)
      assert a.shape == b.shape == (48, 64, 3)
      assert np.abs(a - b).mean() > 0.1, (v1, v2)  # the picture itself changed

      page.wait_for("document.getElementById('status').textContent === 'done'", timeout=180)
      # Updated in place: the script's own variable survived every update.
      assert page.evaluate('window.sameDocument') == 'yes'
      assert page.evaluate("document.getElementById('output').textContent") == f'saved {out}'
      assert page.evaluate("document.getElementById('bar').value") == 200
      assert (
        page.evaluate("document.getElementById('curve').querySelectorAll('polyline').length") >= 3
      )  # noqa: E501
      final = np.asarray(Image.open(io.BytesIO(page.screenshot('result'))).convert('RGB'))
      saved = np.asarray(Image.open(out).convert('RGB'))
      assert np.abs(final.astype(int) - saved.astype(int)).max() <= 2  # the result as saved
    assert run.wait(60) == 0, ''.join(lines)
  finally:
    if run.poll() is None:
      run.kill()
      run.wait()


def test_a_batch_says_done_after_its_last_group(tmp_path, caffe_npz, monkeypatch):
  """Trial 28: 'done' (and the first group's image) after the first of two groups."""
  import small_runs

  from nst_jax import config as config_lib
  from nst_jax.io import jobs as jobs_lib
  from nst_jax.runs import batch as batch_lib

  rng = np.random.default_rng(0)
  for name, size in (('a.png', (32, 24)), ('b.png', (32, 40)), ('s.png', (32, 32))):
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8)).save(tmp_path / name)
  seen = []
  real = preview_lib.Preview.finish

  def finish(self, rgb, output=''):
    seen.append(sorted(p.name for p in (tmp_path / 'out').glob('*_s.png')))
    return real(self, rgb, output)

  monkeypatch.setattr(preview_lib.Preview, 'finish', finish)
  monkeypatch.setattr(preview_lib, 'DEFAULT_LINGER_S', 0.0)
  cfg = config_lib.StyleConfig(
    inputs=config_lib.InputConfig(width=32),
    model=config_lib.ModelConfig(weights=str(caffe_npz)),
    loss=small_runs.loss_config(),
    schedule=config_lib.ScheduleConfig(iterations=2),
    save=config_lib.SaveConfig(path=f'{tmp_path}/out/', record=False),
    run=config_lib.RunConfig(serve=0, print_iter=0, progress='log'),
  )
  jobs = [jobs_lib.Job(str(tmp_path / n), (str(tmp_path / 's.png'),)) for n in ('a.png', 'b.png')]
  batch_lib.run_batch(jobs, cfg)
  assert seen == [['a_s.png', 'b_s.png']]  # once, when both groups are written
