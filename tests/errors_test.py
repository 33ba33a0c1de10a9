"""The one-line error contract: file names cannot break the line."""

import pytest

from nst_jax import errors


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

  @errors.keywords_checked
  def g(x, *, alpha=1):
    return x + alpha

  assert g(1, alpha=2) == 3
  with pytest.raises(errors.ArgumentError, match=r"^g got an unknown keyword 'alpha_'; did you"):
    g(1, alpha_=2)
