"""Runs main.py's (or convert_weights.py's) command line many times from one interpreter.

  python tests/cli_forks.py RUNS.json [convert_weights.py]
  python tests/cli_forks.py --serve [convert_weights.py]

RUNS.json is a list of {"argv": [...], "cwd": DIR, "env": {...}, "stderr":
FILE}; each run is a child forked after nst_jax.cli.app is imported (JAX is
imported but its backend not started, so forking is safe), with its own
working directory, environment, argv and stderr file, running `cli.run()` as
main.py does. With convert_weights.py the runs are the converter's
(nst_jax.cli.convert): one program per interpreter, since the two define
some of the same absl flags. Prints a JSON list of exit codes. The runs' own
work is what a user's process does; only the interpreter's start and the
imports (about 2 s each on this project's machines) are shared, which is
what makes the one-line-error tests cheap enough to run all. Tests call
`launch`, which writes RUNS.json and runs this file, or keep a `Server`
(`--serve`: one run per line of stdin, its exit code on a line of stdout)
when each run depends on what the test did after the last one.
"""

import json
import os
from pathlib import Path
import subprocess
import sys
import traceback
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


def launch(runs: list[dict], base: Path, env: dict, program: str = 'main.py') -> list[int]:
  """Runs `runs` (RUNS.json's entries) forked from one interpreter; their exit codes."""
  (base / 'runs.json').write_text(json.dumps(runs))
  r = subprocess.run(
    [sys.executable, __file__, str(base / 'runs.json'), program],
    capture_output=True, text=True, timeout=600, env=env,
  )  # fmt: skip
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


class Result(NamedTuple):
  """A forked run as subprocess.run reports one: its stdout and stderr are one stream."""

  returncode: int
  stderr: str

  @property
  def stdout(self) -> str:
    return self.stderr


class Server:
  """An interpreter that has imported the program and forks one run per `run` call.

  For tests whose runs each depend on what the test did after the last one
  (a file written, a second run beside the first): the same start-up
  saving as `launch`, one run at a time. `close` ends it.
  """

  def __init__(self, base: Path, env: dict, program: str = 'main.py'):
    self._base, self._count = Path(base), 0
    self._proc = subprocess.Popen(
      [sys.executable, __file__, '--serve', program],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip

  def run(self, argv: list, *, cwd: Path, env: dict) -> Result:
    """Runs the program with `argv` in `cwd` under `env`, forked; waits for it."""
    self._count += 1
    stderr = self._base / f'run{self._count}.stderr'
    request = {'argv': [str(a) for a in argv], 'cwd': str(cwd), 'env': env, 'stderr': str(stderr)}
    self._proc.stdin.write(json.dumps(request) + '\n')
    self._proc.stdin.flush()
    reply = self._proc.stdout.readline()
    assert reply, f'the fork server ended (exit {self._proc.wait()})'
    return Result(int(reply), stderr.read_text(errors='replace'))

  def close(self) -> None:
    self._proc.stdin.close()
    self._proc.wait(timeout=60)


def _child(run: dict, cli, program: str) -> int:
  os.chdir(run['cwd'])
  os.environ.clear()
  os.environ.update(run['env'])
  fd = os.open(run['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  # Off the server's request pipe: a run reads no stdin, as under subprocess.run.
  os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
  sys.argv = [str(ROOT / program), *run['argv']]
  try:
    cli.run()
    return 0
  except SystemExit as e:  # as the interpreter would end the process
    if e.code is None or isinstance(e.code, int):
      return e.code or 0
    print(e.code, file=sys.stderr)
    return 1
  except BaseException:  # noqa: BLE001 - an uncaught error, as Python reports it
    traceback.print_exc()
    return 1


def _fork(run: dict, cli, program: str) -> int:
  """Runs one run in a forked child; its exit code."""
  pid = os.fork()
  if pid == 0:
    code = 1
    try:
      code = _child(run, cli, program)
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
  _, status = os.waitpid(pid, 0)
  return os.waitstatus_to_exitcode(status)


def main() -> None:
  sys.path.insert(0, str(ROOT))
  serve = sys.argv[1] == '--serve'
  # The program whose command line the runs give, as its file in ROOT names it.
  program = sys.argv[2] if len(sys.argv) > 2 else 'main.py'
  if program == 'convert_weights.py':
    from nst_jax.cli import convert as cli
  else:
    from nst_jax.cli import app as cli
  if serve:
    for line in sys.stdin:
      print(_fork(json.loads(line), cli, program), flush=True)
    return
  runs = json.loads(Path(sys.argv[1]).read_text())
  print(json.dumps([_fork(run, cli, program) for run in runs]))


if __name__ == '__main__':
  main()
