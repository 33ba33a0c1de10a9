"""Job lists: paths, directories, globs, CSV and JSON-lines files, output names."""

import json
import re

import pytest

from nst_jax import errors
from nst_jax.io import jobs as jobs_lib


def _touch(directory, *names):
  directory.mkdir(parents=True, exist_ok=True)
  for name in names:
    (directory / name).write_bytes(b'')
  return directory


def test_specs_expand_directories_and_globs(tmp_path):
  contents = _touch(tmp_path / 'c', 'b.jpg', 'a.PNG', 'notes.txt')
  styles = _touch(tmp_path / 's', 'x.jpg', 'y.jpg')
  jobs = jobs_lib.jobs_from_specs(str(contents), [str(styles / '*.jpg')])
  assert [(j.content, j.style) for j in jobs] == [
    (str(contents / 'a.PNG'), (str(styles / 'x.jpg'),)),
    (str(contents / 'a.PNG'), (str(styles / 'y.jpg'),)),
    (str(contents / 'b.jpg'), (str(styles / 'x.jpg'),)),
    (str(contents / 'b.jpg'), (str(styles / 'y.jpg'),)),
  ]
  # Comma-separated files stay one blended style.
  (job,) = jobs_lib.jobs_from_specs('c.jpg', ['x.jpg', 'y.jpg'])
  assert job.style == ('x.jpg', 'y.jpg')
  with pytest.raises(errors.ConfigError, match='inputs.style_path .* among several blended styles'):
    jobs_lib.jobs_from_specs('c.jpg', [str(styles), 'y.jpg'])
  with pytest.raises(errors.ConfigError, match='holds no images'):
    jobs_lib.jobs_from_specs(str(_touch(tmp_path / 'empty')), ['x.jpg'])
  assert jobs_lib.is_pattern(str(contents)) and jobs_lib.is_pattern('a/*.jpg')
  assert not jobs_lib.is_pattern('a.jpg')


def test_csv_and_json_lines_files(tmp_path):
  (tmp_path / 'jobs.csv').write_text(
    'content,style,content_weight,style_weight,output\n'
    'a.jpg,x.jpg+y.jpg,5,,out/1.png\n'
    '/abs/b.jpg,x.jpg,,0.5,\n'
  )
  a, b = jobs_lib.read_jobs(tmp_path / 'jobs.csv')
  x, y = str(tmp_path / 'x.jpg'), str(tmp_path / 'y.jpg')
  assert a == jobs_lib.Job(str(tmp_path / 'a.jpg'), (x, y), 5.0, None, str(tmp_path / 'out/1.png'))
  assert b == jobs_lib.Job('/abs/b.jpg', (str(tmp_path / 'x.jpg'),), None, 0.5, '')
  (tmp_path / 'jobs.jsonl').write_text(
    json.dumps({'content': 'a.jpg', 'style': ['x.jpg', 'y.jpg'], 'style_weight': 2}) + '\n\n'
  )
  (c,) = jobs_lib.read_jobs(tmp_path / 'jobs.jsonl')
  assert c.style == (str(tmp_path / 'x.jpg'), str(tmp_path / 'y.jpg')) and c.style_weight == 2.0


@pytest.mark.parametrize(
  'name,text,message',
  [
    # The header is line 1 (was 'line 2', the first job's), and blank lines count.
    ('j.csv', 'content,style,colour\na.jpg,b.jpg,red\n', '/j.csv line 1: unknown column colour;'),
    ('j.csv', 'content,style\na.jpg,\n', 'line 2: content and style are required'),
    ('j.csv', 'content,style\n\na.jpg,b.jpg\nc.jpg,\n', '/j.csv line 4: content and style are'),
    ('j.jsonl', '\n{"content": "a.jpg", "colour": "red"}\n', '/j.jsonl line 2: unknown column'),
    ('j.csv', 'content,style,style_weight\na.jpg,b.jpg,lots\n', 'style_weight must be a number'),
    ('j.csv', 'content,style,style_weight\na.jpg,b.jpg,-1\n', 'finite number >= 0'),
    ('j.csv', 'content,style\na.jpg,b.jpg,c.jpg\n', 'more values than the header'),
    ('j.csv', 'content,style\n', 'lists no jobs'),
    ('j.jsonl', '{"content": "a.jpg"\n', 'line 1 is not JSON'),
    ('j.jsonl', '[' * 100000 + ']' * 100000, r'line 1 is not JSON \(nested too deeply\)'),  # 34
    ('j.jsonl', '["a.jpg", "b.jpg"]\n', 'must be a JSON object'),
    # JSON's other types where a path goes: named, not looked for as 'None' or '5'.
    (
      'j.jsonl',
      '{"content": "a.jpg", "style": ["b.jpg", null]}\n',
      r'/j.jsonl line 1: style must be an image path \(text\), got null; give a non-empty string$',
    ),
    (
      'j.jsonl',
      '{"content": 5, "style": "b.jpg"}\n',
      'line 1: content must be an image path.*got 5',
    ),
    ('j.jsonl', '{"content": ["a.jpg"], "style": "b.jpg"}\n', r'content must .* got \["a.jpg"\]'),
    (
      'j.jsonl',
      '{"content": "a.jpg", "style": "b.jpg", "output": {"x": 1}}\n',
      r'output must be an image path \(text\), got \{"x": 1\}',
    ),
    (
      'j.jsonl',
      '{"content": "a.jpg", "style": "b.jpg", "style_masks": [" "]}\n',
      'style_masks must be an image path',
    ),
  ],
)
def test_bad_jobs_files_name_the_line(tmp_path, name, text, message):
  (tmp_path / name).write_text(text)
  with pytest.raises(errors.ConfigError, match=message):
    jobs_lib.read_jobs(tmp_path / name)


@pytest.mark.parametrize(
  'name,text',
  [
    ('jobs.csv', 'content,style,style_weight\r\na.jpg,x.jpg,2\r\n'),  # Excel's "CSV UTF-8"
    ('jobs.jsonl', '{"content": "a.jpg", "style": "x.jpg", "style_weight": 2}\n'),
  ],
  ids=['csv', 'jsonl'],
)
def test_a_byte_order_mark_is_skipped(tmp_path, name, text):
  # Before: "unknown column \ufeffcontent" for the CSV, "not JSON" for the JSON lines.
  (tmp_path / name).write_bytes(b'\xef\xbb\xbf' + text.encode('utf-8'))
  assert jobs_lib.read_jobs(tmp_path / name) == [
    jobs_lib.Job(str(tmp_path / 'a.jpg'), (str(tmp_path / 'x.jpg'),), style_weight=2.0)
  ]


def test_a_jobs_file_that_is_not_utf8_is_one_line(tmp_path):
  # Before: a UnicodeDecodeError traceback.
  path = tmp_path / 'jobs.csv'
  path.write_bytes('content,style\ncafé.jpg,x.jpg\n'.encode('latin-1'))
  with pytest.raises(errors.ConfigError) as e:
    jobs_lib.read_jobs(path)
  assert str(e.value) == (
    f'jobs file {path} is not UTF-8 text (byte 0xe9 at offset 17); save it as UTF-8'
  )


def test_a_quoted_csv_value_keeps_its_line_break(tmp_path):
  """Trial 20: the CSV was split into lines first, so "c<LF>x.jpg" became cx.jpg: another
  existing file was styled, and the output written under another name, exit 0."""
  path = tmp_path / 'jobs.csv'
  path.write_text('content,style,output\n"c\nx.jpg",s.jpg,"o\n2.png"\n\nd.jpg,s.jpg,o.png\n')
  assert jobs_lib.read_jobs(path) == [
    jobs_lib.Job(str(tmp_path / 'c\nx.jpg'), (str(tmp_path / 's.jpg'),),
                 output=str(tmp_path / 'o\n2.png')),
    jobs_lib.Job(str(tmp_path / 'd.jpg'), (str(tmp_path / 's.jpg'),),
                 output=str(tmp_path / 'o.png')),
  ]  # fmt: skip


def test_a_csv_row_cut_short_is_refused_naming_its_line(tmp_path):
  """Trial 57: a row with fewer values than the header read its missing output as none given and
  wrote the result to the default output, exit 0."""
  path = tmp_path / 'jobs.csv'
  path.write_text('content,style,output\na.jpg,x.jpg,o.png\nb.jpg,x.jpg\n')
  with pytest.raises(errors.ConfigError) as e:
    jobs_lib.read_jobs(path)
  assert str(e.value) == (
    f"{path} line 3 has fewer values than the header's 3 columns; give each column a value, an "
    'empty one by its comma alone (a.jpg,b.jpg,)'
  )
  path.write_text('content,style,output\na.jpg,x.jpg,o.png\nb.jpg,x.jpg,\n')
  assert [job.output for job in jobs_lib.read_jobs(path)] == [str(tmp_path / 'o.png'), '']


def test_file_and_column_names_with_control_characters_stay_on_one_line(tmp_path):
  path = tmp_path / 'my\njobs.csv'
  path.write_text('content,style,\tnote\na.jpg,x.jpg,hi\n')
  with pytest.raises(errors.ConfigError) as e:
    jobs_lib.read_jobs(path)
  assert str(e.value) == (
    f"{str(path)!r} line 1: unknown column '\\tnote'; the columns are "
    'content, style, content_weight, style_weight, output, content_mask, style_masks'
  )
  with pytest.raises(errors.ConfigError) as e:
    jobs_lib.read_jobs(tmp_path / 'gone\n.csv')
  assert '\n' not in str(e.value) and str(e.value).startswith(f"jobs file '{tmp_path}/gone\\n.csv'")


def test_outputs_are_unique_and_never_replace_files(tmp_path):
  (tmp_path / 'a_x.png').write_bytes(b'')
  jobs = [jobs_lib.Job('d/a.jpg', ('s/x.jpg',)), jobs_lib.Job('e/a.jpg', ('s/x.jpg',)),
          jobs_lib.Job('a.jpg', ('x.jpg',), output=str(tmp_path / 'mine.jpg'))]  # fmt: skip
  named = jobs_lib.assign_outputs(jobs, str(tmp_path))
  assert [j.output for j in named] == [
    str(tmp_path / 'a_x_2.png'),
    str(tmp_path / 'a_x_3.png'),
    str(tmp_path / 'mine.jpg'),
  ]
  with pytest.raises(errors.ConfigError, match='two jobs write'):
    jobs_lib.assign_outputs([jobs[2], jobs[2]], str(tmp_path))


def test_a_folder_leaves_out_what_nst_jax_wrote_into_it(tmp_path, caplog):
  """Trial 26: a run into its own input folder styled its results, loss plots and sheets."""
  from nst_jax.io import output_names

  caplog.set_level('INFO')
  for name in ('a.jpg', 'b.jpg', 'a_s.png', 'a_s.loss.png', 'a_s.sheet.jpg', 'a_s_00001.png'):
    (tmp_path / name).write_bytes(name.encode())
  result = tmp_path / 'a_s.png'
  (tmp_path / 'a_s.json').write_text(json.dumps({
    'output': str(result), 'result_sha256': output_names.file_sha256(result),
    'intermediates': ['a_s_00001.png'],
  }))  # fmt: skip
  names = [p.rsplit('/', 1)[-1] for p in jobs_lib.expand(str(tmp_path), what='inputs.content_path')]
  assert names == ['a.jpg', 'b.jpg']
  assert f'inputs.content_path: left out 4 file(s) of {tmp_path} that nst-jax wrote' in caplog.text
  # A result changed since its record was written is the user's image, and so are the rest.
  result.write_bytes(b'my own picture now')
  assert len(jobs_lib.expand(f'{tmp_path}/*.png', what='inputs.content_path')) == 3
  # A video's frame folder, claimed by the record beside it.
  frames = tmp_path / 'frames_out'
  frames.mkdir()
  (frames / 'frame_00001.png').write_bytes(b'styled')
  (tmp_path / 'frames_out.json').write_text(json.dumps({'output': str(frames), 'frames': 1}))
  with pytest.raises(errors.ConfigError) as e:
    jobs_lib.expand(f'{tmp_path}/frames*/*.png', what='inputs.content_path')
  assert str(e.value) == (
    f'inputs.content_path: the pattern {tmp_path}/frames*/*.png matches no files but the results '
    'of nst-jax runs; check the path'
  )


def test_an_empty_entry_between_plus_signs_is_named(tmp_path):
  """Trial 26: 's.jpg+' gave 'image . does not exist'."""
  jobs = tmp_path / 'j.csv'
  jobs.write_text('content,style,output\nc.jpg,s.jpg+,o1.png\n')
  with pytest.raises(errors.ConfigError) as e:
    jobs_lib.read_jobs(jobs)
  assert (
    str(e.value) == f"{jobs} line 2: style has an empty entry in 's.jpg+'; separate files with +"
  )


def test_json_lines_slips_of_type_and_a_plus_in_a_file_name_are_named(tmp_path):
  """Trial 28: true was taken as content weight 1, output 0 as an automatic name, and a+b.jpg
  (one file) as two styles, 'image a does not exist'."""
  (tmp_path / 'a+b.jpg').write_bytes(b'x')
  cases = [
    ('{"content": "c.jpg", "style": "s.jpg", "content_weight": true}',
     'content_weight must be a number, got true'),
    ('{"content": "c.jpg", "style": "s.jpg", "output": 0}',
     'output must be an image path (text), got 0; give a non-empty string'),
    ('{"content": "c.jpg", "style": "a+b.jpg"}',
     "style 'a+b.jpg' is one file, but + separates files here; rename it, or give the styles as "
     'a JSON list in a .jsonl jobs file'),
  ]  # fmt: skip
  jobs = tmp_path / 'j.jsonl'
  for line, message in cases:
    jobs.write_text(line + '\n')
    with pytest.raises(errors.ConfigError) as e:
      jobs_lib.read_jobs(jobs)
    assert str(e.value) == f'{jobs} line 1: {message}'
  jobs.write_text('{"content": "c.jpg", "style": ["a+b.jpg"]}\n')
  assert jobs_lib.read_jobs(jobs)[0].style == (str(tmp_path / 'a+b.jpg'),)


def test_a_jobs_file_that_is_a_folder_or_a_pipe_is_named_so(tmp_path):
  """Trial 34 Y15: both were 'does not exist'; a folder is the likeliest slip (--jobs photos/)."""
  import os

  os.mkfifo(tmp_path / 'f.csv')
  for name, what in (('', 'is a directory'), ('f.csv', 'is not a regular file (a pipe, socket')):
    with pytest.raises(errors.ConfigError, match=re.escape(f'{what}')):
      jobs_lib.read_jobs(tmp_path / name)
