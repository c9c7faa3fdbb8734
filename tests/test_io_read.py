"""p2p.io's readers: what stands where a file should be, strict JSON, and where in the file a bad value is."""

import os

import pytest

from p2p.io import InputError, not_a_file, read_json, read_jsonl, read_text


def test_not_a_file_says_what_is_there(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to("gone")
    (tmp_path / "link").symlink_to("file")
    os.mkfifo(tmp_path / "fifo")
    assert not_a_file(tmp_path / "file") is None and not_a_file(tmp_path / "link") is None
    assert not_a_file(tmp_path / "missing") == "file not found"
    assert not_a_file(tmp_path / "file" / "child") == "not found (a parent of it is a file, not a directory)"
    assert not_a_file(tmp_path / "dir") == "is a directory, not a file"
    assert not_a_file(tmp_path / "loop") == "symbolic link loop"
    assert not_a_file(tmp_path / "dangling") == "broken symbolic link (to gone, which does not exist)"
    assert not_a_file(tmp_path / "fifo") == "is a FIFO (named pipe), not a file"  # reading it would block
    with pytest.raises(InputError, match="fifo: is a FIFO"):
        read_text(tmp_path / "fifo")


def test_read_text_caps_the_size_before_reading(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("x" * 11)
    assert read_text(path, max_bytes=11) == "x" * 11
    with pytest.raises(InputError, match=r"big.txt: 11 bytes, over the limit of 10$"):
        read_text(path, max_bytes=10)


@pytest.mark.parametrize("text, where", [
    ('{"a": [1, {"b": NaN}]}', "field 'a[1].b': NaN is not valid JSON"),
    ('[{"id": 1}, {"id": 2, "score": -Infinity}]', "record item 1: field 'score': -Infinity is not valid JSON"),
    ('[1, Infinity]', "record item 1: Infinity is not valid JSON"),
    ("NaN", "NaN is not valid JSON (numbers must be finite)"),
])
def test_non_finite_numbers_are_refused_where_they_stand(tmp_path, text, where):
    path = tmp_path / "data.json"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        read_json(path)
    assert str(err.value).startswith(f"{path}: {where}")


def test_jsonl_names_the_line_of_a_bad_value_and_of_deep_nesting(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"ok": 1}\n\n{"x": {"y": NaN}}\n')
    with pytest.raises(InputError, match=r"record line 3: field 'x.y': NaN is not valid JSON"):
        list(read_jsonl(path))
    path.write_text('{"ok": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(InputError, match=r"record line 2: JSON nested too deeply"):
        list(read_jsonl(path))
