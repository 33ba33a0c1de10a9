"""Signals: a run stops after saving on Ctrl-C, a kill or a hang-up; a second one ends it.

`stop_on_signals` turns the first SIGINT/SIGTERM/SIGHUP into a flag the
loop polls (nst_jax.engine.loop), so the run saves its checkpoint before it
stops; `exit_on_signals`, for a program's main, ends the process at once on
a signal before any iteration (nothing to lose) or on a second one.
"""

from collections.abc import Callable, Iterator
import contextlib
import os
import signal
import threading
import time

from nst_jax.engine import loop as loop_lib

# The signals that stop a run after saving: Ctrl-C, a kill or a preemption
# notice, and a hang-up (a dropped ssh connection, a closed terminal), whose
# default action would end the process without saving.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Signals closer together than this are one request. coreutils' `timeout`
# sends its signal to the process and then to its process group, so the
# process gets it twice, microseconds apart (measured: 4 us): read as a
# second Ctrl-C, a run capped with `timeout -s INT` exited at once and lost
# what it had done since its last checkpoint (4 of 11 tries in trial 10). A
# person's second Ctrl-C comes later than this.
AGAIN_AFTER_S = 0.1
# Set while `stop_on_signals` turns signals into the loop's flag (main thread).
LISTENING = threading.Event()


@contextlib.contextmanager
def exit_on_signals(
  *, early: bool = True, before_exit: Callable[[], None] = lambda: None
) -> Iterator[None]:
  """For a program's main: exit at once on a signal before any iteration, or on a second one.

  Python runs signal handlers only between bytecodes of the main thread, so
  while it compiles (or waits for a long device call) a SIGTERM waited 21 s
  at 384 px and minutes at large sizes, and a second Ctrl-C did nothing. The
  C-level handler also writes each signal's number to a wakeup pipe, which a
  thread here reads at once: before the first iteration (`loop.ITERATED`)
  there is no state to lose, so the process ends with one line and 128 +
  the signal number; a second SIGINT/SIGTERM/SIGHUP (`AGAIN_AFTER_S` or
  more after the first: closer ones are one signal sent twice) ends it at
  once whatever it is doing (the last checkpoint, written atomically,
  stays). Otherwise the first signal is left to `stop_on_signals`, which
  saves first; outside it, after the last iteration, the result's files
  are being written: they are finished first, with a line saying so
  (trial 20: SIGTERM's default action there left a result without its
  record).

  Only for code that owns the process (the command line): it calls
  os._exit. Signals reach the pipe only while Python handles them: the
  caller installs handlers for all of `STOP_SIGNALS` that do nothing (the
  command line does, unless several processes must stop together).

  Args:
    early: exit on the first signal before any iteration (off for
      multi-process runs, whose processes must stop together).
    before_exit: called just before the process ends (the output planner's
      lock files go).
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  seen = []  # when each signal came (one sent twice counted once)

  def watch() -> None:
    while data := os.read(read_fd, 64):
      for signum in data:
        now = time.monotonic()
        if signum not in STOP_SIGNALS or (seen and now - seen[0] < AGAIN_AFTER_S):
          continue
        seen.append(now)
        if len(seen) > 1:
          why = (
            f'interrupted again by signal {signum}; stopped at once without saving (any '
            'checkpoint written before is kept)'  # trial 34: 'a' promised one before the first
          )
        elif early and not loop_lib.ITERATED.is_set():
          why = f'interrupted by signal {signum} before the first iteration; nothing was written'
        elif LISTENING.is_set() or not loop_lib.ITERATED.is_set():
          continue  # the loop saves, then stops (or, several processes: they stop together)
        else:
          os.write(2, f'signal {signum} after the last iteration: the results are written '
                   'first (a second signal stops at once)\n'.encode())  # fmt: skip
          continue
        before_exit()
        os.write(2, f'error: {why}\n'.encode())
        os._exit(128 + signum)

  thread = threading.Thread(target=watch, name='nst-jax-signals', daemon=True)
  thread.start()
  try:
    yield
  finally:
    signal.set_wakeup_fd(previous)
    os.close(write_fd)  # the thread reads the end of the pipe and returns
    thread.join(timeout=1.0)
    os.close(read_fd)


@contextlib.contextmanager
def stop_on_signals(*, interrupt_again: bool = False):
  """Turns SIGINT/SIGTERM/SIGHUP into a flag the loop polls, so it can save first.

  Yields a callable returning the signal number received, or None. Only the
  main thread can install handlers; elsewhere signals keep their defaults.
  The previous handlers come back on leaving, also on an error.

  Args:
    interrupt_again: a second signal (`AGAIN_AFTER_S` or more after the
      first) raises KeyboardInterrupt at once (a library call's Ctrl-C);
      else it is ignored (the command line's `exit_on_signals` ends the
      process on it).
  """
  received, first = [], []
  if threading.current_thread() is not threading.main_thread():
    yield lambda: None
    return

  def handler(signum, frame):
    if received:
      if interrupt_again and time.monotonic() - first[0] >= AGAIN_AFTER_S:
        raise KeyboardInterrupt(f'interrupted again by signal {signum}')
      return
    received.append(signum)
    first.append(time.monotonic())

  previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
  was_listening = LISTENING.is_set()
  LISTENING.set()
  try:
    yield lambda: received[0] if received else None
  finally:
    if not was_listening:
      LISTENING.clear()
    for signum, handler in previous.items():
      signal.signal(signum, handler)
