import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from p2p.io import (
    InputError,
    atomic_path,
    check_manifest,
    read_json,
    read_jsonl,
    read_text,
    write_dir,
    write_json,
    write_jsonl,
    write_manifest,
)

ROOT = Path(__file__).resolve().parents[1]


def test_write_json_roundtrip_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_json(path, {"a": "é"})
    assert read_json(path) == {"a": "é"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_partial_output(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"n": 1}])

    def rows():
        yield {"n": 2}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert path.read_text() == '{"n": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_atomic_path_creates_nothing_when_the_block_fails(tmp_path):
    with pytest.raises(ValueError), atomic_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("partial")
        raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_truncated_json_names_file_and_line(tmp_path):
    path = tmp_path / "q.json"
    path.write_text('[\n {"id": "1",\n  "input": "abc"')
    with pytest.raises(InputError, match=r"q\.json: record line 3: malformed JSON"):
        read_json(path)


def test_non_utf8_names_the_line_and_byte(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"record line 2: not UTF-8 text \(bad byte 0xe9 at byte 19\)"):
        read_text(path)


def test_read_jsonl_skips_blank_lines_and_reports_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\nnot json\n')
    rows = read_jsonl(path)
    assert next(rows) == (1, {"a": 1})
    assert next(rows) == (3, {"a": 2})
    with pytest.raises(InputError, match="record line 4"):
        next(rows)


def test_input_error_is_one_line():
    err = InputError("f.json", "bad\nthing", record="item 2", field="profile[0].tag")
    assert str(err) == "f.json: record item 2: field 'profile[0].tag': bad thing"
    assert json.dumps(str(err)).count("\\n") == 0


def test_write_dir_replaces_its_own_directory_whole_and_refuses_one_holding_someone_elses_files(tmp_path):
    out = tmp_path / "out"

    def fill(text: str):
        return lambda tmp: (tmp / "a.txt").write_text(text)

    def ours(entry: Path) -> bool:
        return entry.name == "a.txt"

    write_dir(out, fill("1"), ours=ours)
    write_dir(out, fill("2"), ours=ours)  # its own: replaced
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "a.txt").read_text() == "2"

    (out / "thesis.txt").write_text("mine")
    with pytest.raises(InputError, match=r"out: holds files this command did not write \(thesis.txt\).*--force"):
        write_dir(out, fill("3"), ours=ours)
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "thesis.txt"] and (out / "a.txt").read_text() == "2"
    write_dir(out, fill("4"), ours=ours, force=True)
    assert [p.name for p in out.iterdir()] == ["a.txt"]

    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(InputError, match="file: exists and is not a directory"):
        write_dir(tmp_path / "file", fill("5"), ours=ours, force=True)
    assert (tmp_path / "file").read_text() == "not a directory"


#: Writes `argv[1]` through atomic_path and holds the write open until a line arrives on stdin (or a SIGKILL).
HELD_WRITER = """
import sys
from p2p.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("partial")
    print("writing", flush=True)
    sys.stdin.readline()
    tmp.write_text("whole")
"""


def _held_writer(path: Path) -> subprocess.Popen:
    writer = subprocess.Popen([sys.executable, "-c", HELD_WRITER, str(path)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert writer.stdout.readline() == "writing\n"
    return writer


def test_a_killed_writers_temporary_is_swept_by_the_next_writer_and_a_live_ones_is_kept(tmp_path):
    killed, live = _held_writer(tmp_path / "killed.json"), _held_writer(tmp_path / "live.json")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert len(left) == 2 and left[0].startswith(".killed.json.") and left[1].startswith(".live.json.")

        subprocess.run([sys.executable, "-c", "import sys; from p2p.io import write_text; write_text(sys.argv[1], 'x')",
                        str(tmp_path / "next.txt")], cwd=ROOT, check=True, timeout=60)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert len(left) == 2 and left[0].startswith(".live.json.") and left[1] == "next.txt"  # killed's swept

        live.communicate("go on\n", timeout=30)
        assert live.returncode == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["live.json", "next.txt"]
        assert (tmp_path / "live.json").read_text() == "whole"
    finally:
        for writer in (killed, live):
            if writer.poll() is None:
                writer.kill()


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_get_the_modes_the_umask_allows(tmp_path, umask, file_mode, dir_mode):
    import torch
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        save_file({"w": torch.zeros(2)}, tmp / "w.safetensors")  # safetensors makes its files 0600
        (tmp / "sub").mkdir()
        write_json(tmp / "sub" / "meta.json", {})

    old = os.umask(umask)
    try:
        write_json(tmp_path / "plain.json", {})
        with atomic_path(tmp_path / "tensors.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, tmp)
        write_dir(tmp_path / "dir", fill, ours=lambda entry: False)
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert modes == {"plain.json": file_mode, "tensors.safetensors": file_mode, "dir": dir_mode,
                     "dir/w.safetensors": file_mode, "dir/sub": dir_mode, "dir/sub/meta.json": file_mode}


def test_a_manifest_tells_the_files_of_one_generation_from_another(tmp_path):
    write_json(tmp_path / "a.json", [1])
    write_json(tmp_path / "b.json", [2])
    write_manifest(tmp_path)
    check_manifest(tmp_path)
    (tmp_path / ".a.json.p2p-1-00000000.tmp").mkdir()  # temporaries are not data
    check_manifest(tmp_path)

    write_json(tmp_path / "c.json", [3])
    with pytest.raises(InputError, match=r"c\.json: not listed in manifest\.json"):
        check_manifest(tmp_path)
    (tmp_path / "c.json").unlink()
    write_json(tmp_path / "b.json", [4])
    with pytest.raises(InputError, match=r"b\.json: does not belong with the other files here"):
        check_manifest(tmp_path)
    (tmp_path / "b.json").unlink()
    with pytest.raises(InputError, match=r"b\.json: missing, though manifest\.json lists it"):
        check_manifest(tmp_path)
