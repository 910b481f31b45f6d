"""`tdmpc-ray download` and published names: a real HTTP server on 127.0.0.1 (serving local copies
of the published students, with Range support) stands in for the paper's repository."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tdmpc_ray import cli
from tdmpc_ray.model.published import (
    BASE_URL_ENV,
    CACHE_ENV,
    MIRROR_DIR_ENV,
    PUBLISHED,
    DownloadError,
    download,
    find_published,
    published,
    resolve_checkpoint,
)
from tests.helpers import shared_checkpoint

FP16 = published("mt30-1M-fp16")
FLOOD = 64 << 20


class Mirror:
    """What the server serves and what it was asked: `mode` is `good`, `corrupt` (one byte
    altered), `cut` (the connection drops halfway through the next response, once) or `flood`
    (the file, then `FLOOD` more bytes, with no Content-Length); `flooded` is set when a flood
    was sent whole (the client read it all)."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.mode = "good"
        self.requests: list[tuple[str, str | None]] = []
        self.url = ""
        self.flooded = False


def _handler(mirror: Mirror) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.rsplit("/", 1)[-1]
            mirror.requests.append((name, self.headers.get("Range")))
            if name not in mirror.files:
                self.send_error(404)
                return
            data = bytearray(mirror.files[name].read_bytes())
            if mirror.mode == "flood":
                self._flood(bytes(data))
                return
            if mirror.mode == "corrupt":
                data[len(data) // 2] ^= 0xFF
            start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = bytes(data[start:])
            if mirror.mode == "cut":
                mirror.mode = "good"
                body = body[: len(body) // 2]
                self.close_connection = True
            self.wfile.write(body)

        def _flood(self, data: bytes) -> None:
            self.send_response(200)
            self.end_headers()
            self.close_connection = True
            try:
                self.wfile.write(data)
                for _ in range(FLOOD >> 20):
                    self.wfile.write(bytes(1 << 20))
                mirror.flooded = True
            except OSError:
                pass  # the client hung up: it stopped reading

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    """A local HTTP mirror of the published students found on this machine."""
    files = {p.file: shared_checkpoint(p.name) for p in PUBLISHED}
    mirror = Mirror(files)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(mirror))
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}/models"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield mirror
    server.shutdown()
    server.server_close()
    thread.join()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_checks_the_sha256_and_keeps_verified_files(mirror, tmp_path):
    cache = tmp_path / "cache"
    (path,) = download(["mt30-1M-fp16"], cache, mirror.url, progress=False)
    assert path == cache / FP16.file and _sha256(path) == FP16.sha256
    assert sorted(p.name for p in cache.iterdir()) == [FP16.file]
    assert mirror.requests == [(FP16.file, None)]
    assert download([FP16.file], cache, mirror.url, progress=False) == [path]
    assert len(mirror.requests) == 1


def test_a_corrupted_download_is_refused_and_nothing_is_left(mirror, tmp_path):
    cache = tmp_path / "cache"
    mirror.mode = "corrupt"
    with pytest.raises(DownloadError, match=r"sha256 .* is not the published .*refused") as err:
        download(["mt30-1M-fp16"], cache, mirror.url, progress=False)
    assert str(err.value).startswith(f"{mirror.url}/{FP16.file}: ") and "\n" not in str(err.value)
    assert list(cache.iterdir()) == []


def test_an_interrupted_download_resumes_with_a_range_request(mirror, tmp_path):
    cache = tmp_path / "cache"
    mirror.mode = "cut"
    with pytest.raises(DownloadError, match="run again to resume"):
        download(["mt30-1M-fp16"], cache, mirror.url, progress=False)
    part = cache / f"{FP16.file}.part"
    have = part.stat().st_size
    assert 0 < have < FP16.size and not (cache / FP16.file).exists()
    (path,) = download(["mt30-1M-fp16"], cache, mirror.url, progress=False)
    assert mirror.requests == [(FP16.file, None), (FP16.file, f"bytes={have}-")]
    assert _sha256(path) == FP16.sha256 and not part.exists()


def test_a_server_sending_too_much_is_cut_off_while_reading(mirror, tmp_path):
    cache = tmp_path / "cache"
    mirror.mode = "flood"
    with pytest.raises(DownloadError, match="sent more than the published 3982258 bytes") as err:
        download(["mt30-1M-fp16"], cache, mirror.url, progress=False)
    assert str(err.value).startswith(f"{mirror.url}/{FP16.file}: ") and "\n" not in str(err.value)
    assert list(cache.iterdir()) == [] and not mirror.flooded


def test_the_partial_file_never_follows_a_symlink(mirror, tmp_path):
    """A `.part` symlink planted in the cache is replaced, and its target left untouched."""
    cache, target = tmp_path / "cache", tmp_path / "precious.txt"
    target.write_text("keep me")
    cache.mkdir()
    (cache / f"{FP16.file}.part").symlink_to(target)
    (path,) = download(["mt30-1M-fp16"], cache, mirror.url, progress=False)
    assert _sha256(path) == FP16.sha256 and target.read_text() == "keep me"
    assert not path.is_symlink() and sorted(p.name for p in cache.iterdir()) == [FP16.file]


@pytest.fixture
def only_the_mirror(mirror, tmp_path, monkeypatch) -> Path:
    """An empty cache, no local copies, and the local server as the download source."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.setenv(MIRROR_DIR_ENV, str(tmp_path / "no-local-copies"))
    monkeypatch.setenv(BASE_URL_ENV, mirror.url)
    return cache


def test_a_published_name_downloads_on_first_use_then_comes_from_the_cache(
    mirror, only_the_mirror, tmp_path
):
    assert find_published("mt30-1M-int8") is None
    out = tmp_path / "int8-as-fp16.pt"
    assert cli.main(["quantize", "mt30-1M-int8", "--mode", "fp16", "--out", str(out)]) == 0
    assert out.is_file() and len(mirror.requests) == 1
    cached = only_the_mirror / published("mt30-1M-int8").file
    assert find_published("mt30-1M-int8") == cached == resolve_checkpoint("mt30-1M-int8")
    assert len(mirror.requests) == 1


def test_the_download_verb_fetches_and_lists_paths(mirror, only_the_mirror, capsys):
    assert cli.main(["download", "mt30-1M-mixed"]) == 0
    out = capsys.readouterr().out
    path = only_the_mirror / published("mt30-1M-mixed").file
    assert f"mt30-1M-mixed  {path}" in out and _sha256(path) == published("mt30-1M-mixed").sha256


def test_an_unreachable_source_fails_with_one_line_naming_the_url(tmp_path, monkeypatch, capsys):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/models"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(MIRROR_DIR_ENV, str(tmp_path / "none"))
    monkeypatch.setenv(BASE_URL_ENV, url)
    assert cli.main(["eval", "--checkpoint", "mt30-1M-fp16", "--tasks", "cartpole-balance"]) == 2
    assert cli.main(["download", "mt30-1M-fp16"]) == 2
    err = capsys.readouterr().err.splitlines()
    for verb, line in zip(["eval", "download"], err, strict=True):
        assert line.startswith(f"tdmpc-ray {verb}: error: {url}/{FP16.file}: download failed")


def test_unknown_names_and_existing_files_are_not_looked_up(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="'mt30-2M' is not a published checkpoint; known: mt30-1M"):
        download(["mt30-2M"], tmp_path)
    assert resolve_checkpoint(tmp_path / "mine.pt") == tmp_path / "mine.pt"
    monkeypatch.chdir(tmp_path)
    Path("mt30-1M-fp16").write_bytes(b"a local file wins over the registry")
    assert resolve_checkpoint("mt30-1M-fp16") == Path("mt30-1M-fp16")
