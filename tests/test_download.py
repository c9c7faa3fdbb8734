"""The downloader against a real HTTP server on 127.0.0.1 (tests/httpserver.py), and fetch() through a mirror."""

import hashlib
import json
import random
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from httpserver import MirrorServer
from lamp_files import write_lamp_split

from p2p.data.catalog import CATALOG, LAMP_REMOTE_DIRS, dataset_files
from p2p.data.download import DownloadError, download, fetch, file_sha256, mirror_url
from p2p.data.sources.empathetic import load_empathetic
from p2p.data.sources.lamp import load_lamp
from p2p.data.sources.personal_reddit import load_personal_reddit

PAYLOAD_BYTES = 300_000


@pytest.fixture
def served(tmp_path):
    """A server over tmp_path/www holding `data.json`: a JSON array of ~300 kB of random words."""
    root = tmp_path / "www"
    root.mkdir()
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(8)) for _ in range(PAYLOAD_BYTES // 11)]
    (root / "data.json").write_text(json.dumps(words))
    with MirrorServer(root) as server:
        yield server, root / "data.json"


def test_full_download(served, tmp_path):
    server, source = served
    dest = tmp_path / "out" / "data.json"
    result = download(f"{server.url}/data.json", dest, sha256=hashlib.sha256(source.read_bytes()).hexdigest())
    assert result == dest
    assert dest.read_bytes() == source.read_bytes()
    assert not (tmp_path / "out" / "data.json.part").exists()
    assert server.requests == [("data.json", None)]


def test_resumes_after_the_connection_drops(served, tmp_path):
    server, source = served
    server.drop_once("data.json", after_bytes=100_000)
    dest = tmp_path / "data.json"
    download(f"{server.url}/data.json", dest, backoff=0.01)
    assert dest.read_bytes() == source.read_bytes()
    assert server.requests == [("data.json", None), ("data.json", "bytes=100000-")]


def test_reuses_a_part_file_left_by_an_earlier_run(served, tmp_path):
    server, source = served
    dest = tmp_path / "data.json"
    (tmp_path / "data.json.part").write_bytes(source.read_bytes()[:12_345])
    download(f"{server.url}/data.json", dest)
    assert dest.read_bytes() == source.read_bytes()
    assert server.requests == [("data.json", "bytes=12345-")]


def test_a_part_file_that_is_already_whole_is_finished(served, tmp_path):
    server, source = served
    dest = tmp_path / "data.json"
    (tmp_path / "data.json.part").write_bytes(source.read_bytes())
    download(f"{server.url}/data.json", dest)
    assert dest.read_bytes() == source.read_bytes()
    assert server.requests == [("data.json", f"bytes={source.stat().st_size}-")]  # answered 416: nothing left


def test_server_ignoring_range_restarts_the_file(served, tmp_path):
    server, source = served
    server.ignore_range = True
    dest = tmp_path / "data.json"
    (tmp_path / "data.json.part").write_bytes(b"X" * 5000)  # stale bytes that must not survive
    download(f"{server.url}/data.json", dest)
    assert dest.read_bytes() == source.read_bytes()
    assert server.requests == [("data.json", "bytes=5000-")]


def test_a_transfer_cut_without_a_content_length_is_not_kept_as_the_file(served, tmp_path):
    """No Content-Length, no checksum (LaMP): only parsing tells a cut file from a whole one; it is fetched again."""
    server, source = served
    server.cut_once("data.json", after_bytes=100_000)
    dest = tmp_path / "data.json"
    download(f"{server.url}/data.json", dest, backoff=0.01)
    assert dest.read_bytes() == source.read_bytes()
    assert server.requests == [("data.json", None), ("data.json", None)]
    assert [p.name for p in tmp_path.iterdir() if p.name != "www"] == ["data.json"]


def test_checksum_mismatch_saves_nothing(served, tmp_path):
    server, _ = served
    dest = tmp_path / "data.json"
    with pytest.raises(DownloadError, match="sha256 .* does not match the expected 0{64}"):
        download(f"{server.url}/data.json", dest, sha256="0" * 64)
    assert not dest.exists()
    assert not (tmp_path / "data.json.part").exists()


def test_html_page_instead_of_json_is_rejected(served, tmp_path):
    server, _ = served
    server.html_paths.add("data.json")
    dest = tmp_path / "train_questions.json"
    with pytest.raises(DownloadError, match="answered with an HTML page, not the JSON file") as err:
        download(f"{server.url}/data.json", dest)
    assert "LaMP_2/new/" in str(err.value)
    assert not dest.exists()
    assert not (tmp_path / "train_questions.json.part").exists()


def test_http_404_fails_without_retrying(served, tmp_path):
    server, _ = served
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server.url}/missing.json", tmp_path / "missing.json", backoff=0.01)
    assert server.requests == [("missing.json", None)]


def test_unreachable_host_fails_fast_and_says_what_to_do(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/LaMP_3/train/train_questions.json"
    dest = tmp_path / "lamp" / "LaMP-3" / "train_questions.json"
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download(url, dest)
    assert time.monotonic() - start < 3
    assert err.value.unreachable
    assert url in str(err.value)
    assert str(dest.absolute()) in str(err.value)


def test_mirror_url_keeps_the_path_and_replaces_scheme_and_host():
    url = "https://ciir.cs.umass.edu/downloads/LaMP/LaMP_2/new/train/train_questions.json"
    assert mirror_url(url, "http://127.0.0.1:8000/m/") == \
        "http://127.0.0.1:8000/m/downloads/LaMP/LaMP_2/new/train/train_questions.json"
    assert mirror_url(url, None) == url
    with pytest.raises(ValueError, match="not an http"):
        mirror_url(url, "ftp://mirror")


def test_catalog_lamp_urls_and_local_paths():
    files = dataset_files("lamp", ["LaMP-2M"])
    assert [(f.url, f.path) for f in files] == [
        (f"https://ciir.cs.umass.edu/downloads/LaMP/LaMP_2/new/{split}/{name}.json", f"lamp/LaMP-2M/{name}.json")
        for split, name in [("train", "train_questions"), ("train", "train_outputs"), ("dev", "dev_questions"),
                            ("dev", "dev_outputs"), ("test", "test_questions")]]
    assert len(dataset_files("lamp")) == 5 * len(LAMP_REMOTE_DIRS)
    with pytest.raises(ValueError, match="no task"):
        dataset_files("lamp", ["LaMP-6"])


def test_catalog_checksums_match_the_shared_copies(shared_data_dir):
    for name in ("personal_reddit", "empathetic_conversations"):
        for remote in CATALOG[name].files:
            assert remote.url.startswith("https://raw.githubusercontent.com/")
            assert file_sha256(shared_data_dir / remote.path) == remote.sha256, remote.path


def _mirror_of_shared(shared: Path, root: Path, name: str) -> None:
    """Lay the shared copies out under their upstream URL paths, as a mirror would."""
    for remote in CATALOG[name].files:
        target = root / urlsplit(remote.url).path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared / remote.path, target)


def test_fetch_personal_reddit_and_empathetic_through_a_mirror(shared_data_dir, tmp_path):
    root, raw = tmp_path / "mirror", tmp_path / "raw"
    for name in ("personal_reddit", "empathetic_conversations"):
        _mirror_of_shared(shared_data_dir, root, name)
    with MirrorServer(root) as server:
        paths = fetch("personal_reddit", raw, base_url=server.url)
        assert paths == [raw.absolute() / "personal_reddit" / "synthetic_dataset.jsonl"]
        assert len(fetch("empathetic_conversations", raw, base_url=server.url)) == 4
        assert len(server.requests) == 5
        fetch("empathetic_conversations", raw, base_url=server.url)  # all present with the right sha256
        assert len(server.requests) == 5
    records = load_personal_reddit(paths[0])
    assert (len(records), sum(len(r.queries) for r in records)) == (40, 525)
    train = load_empathetic(raw / "empathetic_conversations", splits=["train"])
    assert (len(train), sum(len(r.queries) for r in train)) == (59, 792)


def test_fetch_replaces_a_file_whose_checksum_is_wrong(shared_data_dir, tmp_path, monkeypatch):
    root, raw = tmp_path / "mirror", tmp_path / "raw"
    _mirror_of_shared(shared_data_dir, root, "personal_reddit")
    stale = raw / "personal_reddit" / "synthetic_dataset.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"stale": true}\n')
    with MirrorServer(root) as server:
        monkeypatch.setenv("P2P_MIRROR", server.url)  # the environment names the mirror
        fetch("personal_reddit", raw)
        assert len(server.requests) == 1
    assert file_sha256(stale) == CATALOG["personal_reddit"].files[0].sha256


def _write_lamp_task(directory: Path) -> None:
    """Official-format LaMP-2M files: two users (profiles {m1, m2} and {m3}), golds for train/dev only."""
    prompt = "Which tag does this movie relate to among the following tags? ... description: "
    profile_a = [{"id": "m1", "description": "A ship in space.", "tag": "sci-fi"},
                 {"id": "m2", "description": "A robot learns to love.", "tag": "sci-fi"}]
    profile_b = [{"id": "m3", "description": "Two friends on a road trip.", "tag": "comedy"}]
    files = {
        "train/train_questions.json": [{"id": "110", "input": prompt + "Aliens land.", "profile": profile_a},
                                       {"id": "111", "input": prompt + "A wedding.", "profile": profile_b}],
        "train/train_outputs.json": {"task": "LaMP_2", "golds": [{"id": "110", "output": "sci-fi"},
                                                                  {"id": "111", "output": "comedy"}]},
        "dev/dev_questions.json": [{"id": "210", "input": prompt + "A spaceship.", "profile": profile_a[::-1]}],
        "dev/dev_outputs.json": {"task": "LaMP_2", "golds": [{"id": "210", "output": "sci-fi"}]},
        "test/test_questions.json": [{"id": "310", "input": prompt + "A heist.", "profile": profile_b}],
    }
    for name, obj in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(json.dumps(obj))


def test_fetch_a_lamp_task_through_a_mirror_then_load_it(tmp_path):
    root, raw = tmp_path / "mirror", tmp_path / "raw"
    _write_lamp_task(root / "downloads" / "LaMP" / "LaMP_2" / "new")
    with MirrorServer(root) as server:
        paths = fetch("lamp", raw, base_url=server.url, tasks=["LaMP-2M"])
        assert sorted(p.name for p in paths) == ["dev_outputs.json", "dev_questions.json", "test_questions.json",
                                                 "train_outputs.json", "train_questions.json"]
        assert all(path.startswith("downloads/LaMP/LaMP_2/new/") for path, _ in server.requests)
    records = load_lamp("LaMP-2M", raw / "lamp" / "LaMP-2M")
    assert [[q.id for q in r.queries] for r in records] == [["110", "210"], ["111", "310"]]
    assert [[q.output for q in r.queries] for r in records] == [["sci-fi", "sci-fi"], ["comedy", None]]


def test_fetch_downloads_again_a_present_lamp_file_that_does_not_parse(tmp_path):
    root, raw = tmp_path / "mirror", tmp_path / "raw"
    _write_lamp_task(root / "downloads" / "LaMP" / "LaMP_2" / "new")
    with MirrorServer(root) as server:
        fetch("lamp", raw, base_url=server.url, tasks=["LaMP-2M"])
        cut = raw / "lamp" / "LaMP-2M" / "train_questions.json"
        whole = cut.read_bytes()
        cut.write_bytes(whole[: len(whole) // 2])  # what a cut transfer of an earlier version left
        server.requests.clear()
        fetch("lamp", raw, base_url=server.url, tasks=["LaMP-2M"])
        assert server.requests == [("downloads/LaMP/LaMP_2/new/train/train_questions.json", None)]
    assert cut.read_bytes() == whole


def test_fetch_offline_lists_every_missing_file(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        fetch("lamp", tmp_path / "raw", base_url=f"http://127.0.0.1:{port}", tasks=["LaMP-3"])
    assert time.monotonic() - start < 3
    message = str(err.value)
    assert message.count("\n    -> ") == 5
    assert f"http://127.0.0.1:{port}/downloads/LaMP/LaMP_3/dev/dev_outputs.json" in message
    assert str((tmp_path / "raw" / "lamp" / "LaMP-3" / "dev_outputs.json").absolute()) in message


def test_fetch_offline_keeps_the_files_in_place_and_says_how_to_keep_them_with_dvc(tmp_path):
    """A user's dev files, saved by hand as the message says: a failed fetch lists only what is still missing,
    deletes nothing, and ends with what then works (dvc add, the splits a task needs)."""
    task_dir = tmp_path / "raw" / "lamp" / "LaMP-4"
    write_lamp_split(task_dir, "LaMP-4", "dev", users=5)
    before = {p.name: p.read_bytes() for p in task_dir.iterdir()}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError) as err:
        fetch("lamp", tmp_path / "raw", base_url=f"http://127.0.0.1:{port}", tasks=["LaMP-4"])
    message = str(err.value)
    assert message.count("\n    -> ") == 3 and "dev_questions.json\n" not in message  # train x2, test
    assert f"Then run `dvc add {tmp_path / 'raw' / 'lamp'}`" in message
    assert "dev alone is enough" in message
    assert {p.name: p.read_bytes() for p in task_dir.iterdir()} == before


def test_fetch_only_the_splits_asked_for(tmp_path):
    root, raw = tmp_path / "mirror", tmp_path / "raw"
    _write_lamp_task(root / "downloads" / "LaMP" / "LaMP_2" / "new")
    with MirrorServer(root) as server:
        paths = fetch("lamp", raw, base_url=server.url, tasks=["LaMP-2M"], splits=["dev"])
    assert sorted(p.name for p in paths) == ["dev_outputs.json", "dev_questions.json"]
    with pytest.raises(ValueError, match=r"has no split\(s\) \['val'\]; it has dev, test, train"):
        dataset_files("lamp", ["LaMP-2M"], ["val"])


def test_hugging_face_datasets_give_instructions(tmp_path):
    with pytest.raises(DownloadError, match="LongLaMP/LongLaMP") as err:
        fetch("longlamp", tmp_path)
    assert f"copy the three folders into {tmp_path.absolute()}/longlamp/" in str(err.value)
    with pytest.raises(DownloadError, match="huggingface-cli download Zhaoxuan/P2P_data --repo-type dataset"):
        fetch("p2p_data", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'synth'"):
        fetch("synth", tmp_path)
