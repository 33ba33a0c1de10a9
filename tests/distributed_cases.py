"""Cases of distributed_test.py, each run in a fresh process with simulated devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python tests/distributed_cases.py CASE WEIGHTS.npz WORKDIR

prints one JSON object with what the test asserts on. The device count is
fixed when JAX's CPU backend starts, so these cannot run inside pytest's
own process (which has one device).
"""

import dataclasses
import json
from pathlib import Path
import sys

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import small_runs  # noqa: E402

import nst_jax  # noqa: E402
from nst_jax.io import images as image_lib  # noqa: E402
from nst_jax.io import jobs as jobs_lib  # noqa: E402
from nst_jax.io import outputs  # noqa: E402
from nst_jax.runs import batch as batch_lib  # noqa: E402

ITERATIONS = 8
WIDTH = 64


def sample_jobs(workdir: Path, n: int, *, heights=(48,)) -> list[jobs_lib.Job]:
  """n jobs on crops of the sample images, each with its own weights."""
  content = Image.open(ROOT / 'content_images' / 'tubingen.jpg').convert('RGB')
  style = Image.open(ROOT / 'style_images' / 'starry_night.jpg').convert('RGB')
  images = workdir / 'images'
  images.mkdir(parents=True, exist_ok=True)
  jobs = []
  for i in range(n):
    height = heights[i % len(heights)]
    crop = content.crop((i * 40, i * 20, i * 40 + 512, i * 20 + round(512 * height / WIDTH)))
    crop.resize((WIDTH, height)).save(images / f'c{i}.png')
    style.crop((i * 30, 0, i * 30 + 300, 300)).resize((40, 40)).save(images / f's{i}.png')
    jobs.append(
      jobs_lib.Job(
        str(images / f'c{i}.png'),
        (str(images / f's{i}.png'),),
        content_weight=1.0 + i,
        style_weight=0.01 * (i + 1),
      )
    )
  return jobs


def alone(job: jobs_lib.Job, cfg: nst_jax.StyleConfig, w) -> np.ndarray:
  """The same job run by itself, through the single-run path, on one device."""
  solo = cfg.replace(
    loss=cfg.loss.replace(content_weight=job.content_weight, style_weight=job.style_weight)
  )
  content = image_lib.load_image(job.content, width=cfg.inputs.width)
  style = image_lib.load_image(job.style[0], width=cfg.inputs.width)
  return nst_jax.stylize(content, style, config=solo, weights=w)


def ulp_spread(job: jobs_lib.Job, cfg: nst_jax.StyleConfig, w, reference: np.ndarray) -> float:
  """How far the job's result moves when its start moves by one float32 ulp.

  The smallest change any difference in arithmetic can make; L-BFGS then
  amplifies it (chaotically, with random weights). A sharded result as
  close to the single run as this is as equal as float32 allows.
  """
  # The nudge is to the start image, so the reference run starts from the content.
  assert cfg.inputs.init == 'content', 'a one-ulp spread is defined here for --init content'
  solo = cfg.replace(
    loss=cfg.loss.replace(content_weight=job.content_weight, style_weight=job.style_weight),
    inputs=cfg.inputs.replace(init='file'),
  )
  content = image_lib.load_image(job.content, width=cfg.inputs.width)
  style = image_lib.load_image(job.style[0], width=cfg.inputs.width)
  nudged = np.nextafter(content, np.float32(2))
  moved = nst_jax.stylize(content, style, config=solo, weights=w, init_image=nudged)
  return float(np.abs(moved - reference).max())


def config(loss: nst_jax.LossConfig | None = None, **inputs) -> nst_jax.StyleConfig:
  """The cases' settings; the shallow network of small_runs unless `loss` is given."""
  return nst_jax.StyleConfig(
    inputs=nst_jax.InputConfig(width=WIDTH, **inputs),
    loss=small_runs.loss_config() if loss is None else loss,
    schedule=nst_jax.ScheduleConfig(iterations=ITERATIONS),
    run=nst_jax.RunConfig(print_iter=0),
    save=nst_jax.SaveConfig(record=False),
  )


def case_jobs(weights: str, workdir: Path, n: int, heights=(48,), init='content') -> dict:
  w = nst_jax.load_weights(weights)
  cfg = config(init=init, seed=3)
  jobs = outputs.assign_outputs(sample_jobs(workdir, n, heights=heights), str(workdir / 'out'))
  record = {}
  results = batch_lib.run_batch(jobs, cfg, weights=w, record=record)
  singles = [alone(j, cfg, w) for j in jobs]
  diffs = [float(np.abs(results[j.output] - a).max()) for j, a in zip(jobs, singles, strict=True)]
  # A bitwise-equal result needs no tolerance; the spread costs a run.
  spreads = [
    ulp_spread(j, cfg, w, a) if d > 0 else 0.0 for j, a, d in zip(jobs, singles, diffs, strict=True)
  ]
  groups = [
    {k: v for k, v in g.items() if k != 'image_shards'}
    | {'shard_devices': sorted({d for d, _ in g['image_shards']}),
       'shard_shapes': sorted({s for _, s in g['image_shards']})}
    for g in record['groups']
  ]  # fmt: skip
  return {
    'devices': jax.device_count(),
    'max_diffs': diffs,
    'ulp_spreads': spreads,
    'written': sorted(p.name for p in (workdir / 'out').iterdir()),
    'outputs': sorted(Path(j.output).name for j in jobs),
    'groups': groups,
  }


def case_spatial(weights: str, workdir: Path, height: int) -> dict:
  w = nst_jax.load_weights(weights)
  (job,) = sample_jobs(workdir, 1, heights=(height,))
  content = image_lib.load_image(job.content, width=WIDTH)
  style = image_lib.load_image(job.style[0], width=WIDTH)
  # The default layers: the halo exchange of every stage (four poolings,
  # odd sizes among them) is what spatial sharding must get right.
  cfg = config(loss=nst_jax.LossConfig())

  def spatial(c):
    return c.replace(run=c.run.replace(shard='spatial'))

  one = cfg.replace(schedule=cfg.schedule.replace(iterations=1))
  first_plain = nst_jax.stylize(content, style, config=one, weights=w)
  first_sharded = nst_jax.stylize(content, style, config=spatial(one), weights=w)
  plain, sharded = {}, {}
  a = nst_jax.stylize(content, style, config=cfg, weights=w, record=plain)
  b = nst_jax.stylize(content, style, config=spatial(cfg), weights=w, record=sharded)
  job = dataclasses.replace(
    job, content_weight=cfg.loss.content_weight, style_weight=cfg.loss.style_weight
  )
  return {
    'shape': list(a.shape),
    'max_diff': float(np.abs(a - b).max()),
    'ulp_spread': ulp_spread(job, cfg, w, a),
    'first_step_diff': float(np.abs(first_plain - first_sharded).max()),
    'plain': plain['scales'][0],
    'sharded': sharded['scales'][0],
    'final_loss_plain': plain['history'][-1]['total'] if plain.get('history') else None,
  }


def case_alone(weights: str, workdir: Path, n: int) -> dict:
  """The n sample jobs run alone, against the 8-bit results in workdir/out/r{i}.png."""
  w = nst_jax.load_weights(weights)
  cfg = config()
  diffs, spreads = [], []
  for i, job in enumerate(sample_jobs(workdir, n)):
    got = np.asarray(Image.open(workdir / 'out' / f'r{i}.png'), np.float32) / 255
    want = alone(job, cfg, w)
    diffs.append(float(np.abs(got - want).max()))
    # The same 8-bit file needs no spread; measuring one costs a run.
    spreads.append(ulp_spread(job, cfg, w, want) if diffs[-1] > 0.5 / 255 + 1e-6 else 0.0)
  return {'diffs': diffs, 'spreads': spreads}


def case_fetch(dest: str, url: str, md5: str, process: int, port: int) -> dict:
  """distributed.fetch_weights in one of two processes, the default location at `dest`."""
  from nst_jax.engine import distributed
  from nst_jax.io import weights as weights_lib

  distributed.initialize(f'127.0.0.1:{port}', 2, process)
  weights_lib.DEFAULT_WEIGHTS_PATH = Path(dest)
  weights_lib.KERAS_MIRRORS, weights_lib.KERAS_MD5 = (url,), md5
  w = distributed.fetch_weights(None)
  return {'params_sha256': w.info.params_sha256}


def main():
  case, weights, workdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
  if case == 'fetch':
    out = case_fetch(weights, sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7]))
  elif case.startswith('alone'):
    out = case_alone(weights, workdir, int(case.removeprefix('alone')))
  elif case == 'jobs8':
    out = case_jobs(weights, workdir, 8)
  elif case == 'jobs5':
    out = case_jobs(weights, workdir, 5, heights=(48, 40), init='random')
  elif case.startswith('spatial'):
    out = case_spatial(weights, workdir, int(case.removeprefix('spatial')))
  else:
    raise SystemExit(f'unknown case {case}')
  print(json.dumps(out))


if __name__ == '__main__':
  main()
