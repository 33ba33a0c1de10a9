"""The one-line error contract: file names cannot break the line."""

import errno

import pytest

from nst_jax import errors
from nst_jax.io import atomic


@pytest.mark.parametrize(
  'path,shown',
  [
    ('content/photo 1.jpg', 'content/photo 1.jpg'),
    ('café/été.png', 'café/été.png'),  # printable non-ASCII stays as it is
    ('a\nb.png', "'a\\nb.png'"),
    ('tab\there.png', "'tab\\there.png'"),
    ("it's\r.png", '"it\'s\\r.png"'),
  ],
)
def test_printable_escapes_only_names_that_need_it(path, shown):
  assert errors.printable(path) == shown
  assert '\n' not in errors.printable(path) and '\r' not in errors.printable(path)


def test_printable_takes_path_objects_and_undecodable_bytes(tmp_path):
  assert errors.printable(tmp_path / 'x.png') == str(tmp_path / 'x.png')
  # A name that is not UTF-8: Python keeps the byte as a lone surrogate,
  # which cannot be encoded for printing; repr escapes it.
  shown = errors.printable(b'in/\xff.png')
  assert shown == "'in/\\udcff.png'"
  shown.encode('utf-8')


def test_unknown_keywords_names_the_closest_valid_one_or_lists_them():
  with pytest.raises(errors.ArgumentError) as e:  # a TypeError, as Python's own
    errors.unknown_keywords('f', {'tv_wieght': 1, 'tv_weight': 2}, ('tv_weight', 'style_weight'))
  assert isinstance(e.value, TypeError)
  assert str(e.value) == "f got an unknown keyword 'tv_wieght'; did you mean 'tv_weight'?"
  with pytest.raises(errors.ArgumentError) as e:
    errors.unknown_keywords('f', ['zzz'], ('a', 'b'))
  assert str(e.value) == "f got an unknown keyword 'zzz'; it takes a, b"
  errors.unknown_keywords('f', ['a'], ('a', 'b'))  # nothing unknown: nothing raised
  # Trial 54 T54-8: a name with a word added is the name, not difflib's closest ('style_masks').
  # Trial 56: a slip of a letter (a plural) before the stem ('style_weights' was told 'style').
  for given, meant in (('style_image', 'style'), ('content_img', 'content'), ('my_style', 'style'),
                       ('style_masks_2', 'style_masks'), ('style_mask', 'style_masks'),
                       ('content_masks', 'content_mask'), ('style_weights', 'style_weight'),
                       ('content_weights', 'content_weight')):  # fmt: skip
    with pytest.raises(errors.ArgumentError) as e:
      valid = ('content', 'style', 'style_masks', 'content_mask', 'style_weight', 'content_weight')
      errors.unknown_keywords('stylize', [given], valid)
    assert str(e.value) == f'stylize got an unknown keyword {given!r}; did you mean {meant!r}?'

  @errors.keywords_checked
  def g(x, *, alpha=1):
    return x + alpha

  assert g(1, alpha=2) == 3
  with pytest.raises(errors.ArgumentError, match=r"^g got an unknown keyword 'alpha_'; did you"):
    g(1, alpha_=2)


def test_a_write_failure_is_told_the_fix_of_its_cause(tmp_path):
  """Trial 20: a read-only file system and a folder replaced by a file were told to free space."""
  path = tmp_path / 'r.png'
  fixes = {
    errno.ENOSPC: 'No space; nothing was replaced: free space or choose another place',
    errno.EROFS: 'No space; nothing was replaced: choose another place (a read-only file system)',
    errno.EACCES: f'No space; nothing was replaced: make {tmp_path} writable or choose another '
    'place',
    errno.EIO: 'No space; nothing was replaced: choose another place',
  }
  for code, said in fixes.items():
    assert errors.write_failure(path, OSError(code, 'x'), 'No space') == (
      f'could not write {path}: {said}'
    )
  # Trial 41: a file that may not be replaced (chattr +i), in a writable folder.
  path.write_bytes(b'protected')
  assert errors.write_failure(path, OSError(errno.EPERM, 'x'), 'Operation not permitted') == (
    f'could not write {path}: Operation not permitted; nothing was replaced: the file there may '
    'not be replaced (immutable, or protected): move it away or choose another place'
  )
  path.unlink()
  wrapped = RuntimeError('tensorstore: ...')
  wrapped.__cause__ = OSError(errno.EROFS, 'x')
  assert errors.write_failure(path, wrapped, 'w').endswith('(a read-only file system)')
  (tmp_path / 'gone').write_text('a file where the folder was')
  with pytest.raises(errors.WriteError) as e:
    atomic.write(tmp_path / 'gone' / 'r.png', lambda tmp: None)
  assert str(e.value) == (
    f'could not write {tmp_path}/gone/r.png: its folder {tmp_path}/gone is gone or is not a '
    'folder; nothing was replaced: make it or choose another place'
  )
