"""Tests of nst_jax.engine.signals: a first signal becomes a flag the loop polls."""

import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

import pytest

from nst_jax.engine import signals


def test_stop_on_signals_turns_a_signal_into_a_flag_and_restores_the_handlers():
  # pytest (and each xdist worker) runs tests in the main thread, where
  # handlers can be set; asserted rather than skipped, so it cannot pass unrun.
  assert threading.current_thread() is threading.main_thread()
  before = signal.getsignal(signal.SIGTERM)
  with signals.stop_on_signals() as stop:
    assert stop() is None
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop() == signal.SIGTERM
    os.kill(os.getpid(), signal.SIGINT)
    assert stop() == signal.SIGTERM  # the first one counts
  assert signal.getsignal(signal.SIGTERM) is before


def test_stop_on_signals_for_a_library_call_lets_a_second_signal_interrupt_at_once():
  """stylize's use: the first signal stops the loop (it saves first), a second is Ctrl-C's own."""
  before = signal.getsignal(signal.SIGINT)
  with pytest.raises(KeyboardInterrupt), signals.stop_on_signals(interrupt_again=True) as stop:
    signal.raise_signal(signal.SIGINT)
    assert stop() == signal.SIGINT
    signal.raise_signal(signal.SIGINT)  # the same signal sent twice (`timeout` does): one
    assert stop() == signal.SIGINT
    time.sleep(signals.AGAIN_AFTER_S)
    signal.raise_signal(signal.SIGTERM)
  assert stop() == signal.SIGINT
  assert signal.getsignal(signal.SIGINT) is before


def test_stop_on_signals_off_the_main_thread_leaves_the_handlers_alone():
  # Only the main thread can install handlers: elsewhere the flag stays None.
  before, seen = signal.getsignal(signal.SIGTERM), []

  def worker():
    with signals.stop_on_signals() as stop:
      seen.append((stop(), signal.getsignal(signal.SIGTERM)))

  thread = threading.Thread(target=worker)
  thread.start()
  thread.join()
  assert seen == [(None, before)]


_TWICE = """
import os, signal, sys, time
from nst_jax.engine import loop, signals
with signals.exit_on_signals(), signals.stop_on_signals() as stop:
  loop.ITERATED.set()  # past the first iteration: a first signal is left to the loop
  os.kill(os.getpid(), signal.SIGINT)  # as `timeout` sends it: to the process, then its group
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(0.5)
  print('still running; stop() ==', stop(), flush=True)
  os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C, later: at once
  time.sleep(5)
print('not reached')
"""


def test_a_signal_delivered_twice_at_once_is_one_and_a_later_second_exits_at_once():
  """Trial 10: `timeout -s INT` delivers SIGINT twice, 4 us apart; the run exited without saving."""
  root = Path(__file__).resolve().parent.parent
  r = subprocess.run(
    [sys.executable, '-c', _TWICE], capture_output=True, text=True, cwd=root, timeout=60
  )
  assert r.stdout == f'still running; stop() == {int(signal.SIGINT)}\n'
  assert r.returncode == 128 + signal.SIGINT
  assert r.stderr.strip().splitlines()[-1] == (
    'error: interrupted again by signal 2; stopped at once without saving (any checkpoint '
    'written before is kept)'
  )
