"""Runs main.py's (or convert_weights.py's) command line many times from one interpreter.

  python tests/cli_forks.py RUNS.json [convert_weights.py]

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
`launch`, which writes RUNS.json and runs this file.
"""

import json
import os
from pathlib import Path
import subprocess
import sys
import traceback

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


def _child(run: dict, cli, program: str) -> int:
  os.chdir(run['cwd'])
  os.environ.clear()
  os.environ.update(run['env'])
  fd = os.open(run['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
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


def main() -> None:
  sys.path.insert(0, str(ROOT))
  # The program whose command line the runs give, as its file in ROOT names it.
  program = sys.argv[2] if len(sys.argv) > 2 else 'main.py'
  if program == 'convert_weights.py':
    from nst_jax.cli import convert as cli
  else:
    from nst_jax.cli import app as cli
  runs = json.loads(Path(sys.argv[1]).read_text())
  codes = []
  for run in runs:
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
    codes.append(os.waitstatus_to_exitcode(status))
  print(json.dumps(codes))


if __name__ == '__main__':
  main()
