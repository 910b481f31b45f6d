"""The paper's published 1M MT30 students: a registry, local look-up and a checked download.

Anywhere a checkpoint path is accepted, a published name may be given instead: a short name
(`mt30-1M-fp16`, `mt30-1M-mixed`, `mt30-1M-int8`) or the file name in the paper's repository
(`mt30_1M_steps_045dist_fp16.pt`, ...). An existing file of that name wins over the registry.

A name is looked up without network in the cache folder (`TDMPC_RAY_CACHE_DIR`, default
`$XDG_CACHE_HOME/tdmpc_ray/checkpoints` or `~/.cache/tdmpc_ray/checkpoints`), then in a local
mirror folder (`TDMPC_RAY_CHECKPOINTS_DIR`, default `../shared/checkpoints` beside the source
checkout when it exists). Otherwise it is downloaded into the cache from the repository pinned to
one commit (or from `TDMPC_RAY_CHECKPOINTS_URL`, a mirror with the same file names): resumed
from a partial file with an HTTP Range request, checked against its sha256 and renamed into place
only when it matches. Copies whose sha256 does not match are never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import stat
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

BASE_URL = (
    "https://raw.githubusercontent.com/dmytro-kuzmenko/td-mpc-opt/"
    "d5a28a8cc34ca2c573ffce510fd5ae688ab868d2/tdmpc2/models"
)
"""The paper's repository (dmytro-kuzmenko/td-mpc-opt, MIT) at a pinned commit, so the sha256s
below stay valid."""
CACHE_ENV = "TDMPC_RAY_CACHE_DIR"
MIRROR_DIR_ENV = "TDMPC_RAY_CHECKPOINTS_DIR"
BASE_URL_ENV = "TDMPC_RAY_CHECKPOINTS_URL"
TIMEOUT_S = 30.0
"""Seconds without an answer before a download gives up (a rerun resumes it)."""
_SOURCE_CHECKOUT = Path(__file__).resolve().parents[2]


class DownloadError(ValueError):
    """A published checkpoint that could not be fetched or failed its sha256 check (one line)."""


@dataclass(frozen=True)
class PublishedCheckpoint:
    """One published student: its short name, file name, size and sha256."""

    name: str
    file: str
    size: int
    sha256: str
    description: str


PUBLISHED = (
    PublishedCheckpoint(
        "mt30-1M-fp16",
        "mt30_1M_steps_045dist_fp16.pt",
        3_982_258,
        "3e35489756abf6e0e244371698d063487f70ffb5d109e3d8c84ae7dda5955bfb",
        "all float16; paper's MT30 score 28.45 (fp32 original 28.12)",
    ),
    PublishedCheckpoint(
        "mt30-1M-mixed",
        "mt30_1M_steps_045dist_mixed.pt",
        2_873_651,
        "49135a1f5d763a3bbab36634b9736c2cc8e79701ac35664dcb3fbdf4c1bf9e53",
        "Q ensemble torch.qint8 (scale 1.0), rest float16; paper's score 13.53",
    ),
    PublishedCheckpoint(
        "mt30-1M-int8",
        "mt30_1M_steps_045dist_int8.pt",
        2_001_650,
        "2c8193a0efd62f8aff00f0f998935e25ddbda0a9946ab3de20aa047430907c09",
        "all torch.qint8 (scale 1.0); paper's score 5.09",
    ),
)
"""The paper's 1M MT30 students (distilled from the 317M teacher, 1M steps, d_coef 0.45)."""


def published(name: str) -> PublishedCheckpoint | None:
    """The registry entry for a short or file name, None for any other string."""
    return next((p for p in PUBLISHED if name in (p.name, p.file)), None)


def _entry(name: str) -> PublishedCheckpoint:
    entry = published(name)
    if entry is None:
        known = ", ".join(p.name for p in PUBLISHED)
        raise ValueError(f"{name!r} is not a published checkpoint; known: {known}")
    return entry


def default_cache_dir() -> Path:
    """Where downloads go: `TDMPC_RAY_CACHE_DIR`, else the user's cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "tdmpc_ray" / "checkpoints"


def mirror_dir() -> Path | None:
    """A local folder holding the files: `TDMPC_RAY_CHECKPOINTS_DIR`, else `../shared/checkpoints`
    beside the source checkout (where our machines and CI keep them) when it exists."""
    if os.environ.get(MIRROR_DIR_ENV):
        return Path(os.environ[MIRROR_DIR_ENV]).expanduser()
    shared = _SOURCE_CHECKOUT.parent / "shared" / "checkpoints"
    return shared if shared.is_dir() else None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_copy(path: Path, entry: PublishedCheckpoint) -> bool:
    return (
        path.is_file() and path.stat().st_size == entry.size and sha256_file(path) == entry.sha256
    )


def find_published(name: str) -> Path | None:
    """A verified local copy of published checkpoint `name` (cache, then mirror folder), or None.
    Never touches the network; an unknown name is a ValueError."""
    entry = _entry(name)
    folders = [default_cache_dir(), mirror_dir()]
    return next(
        (
            folder / entry.file
            for folder in folders
            if folder and _is_copy(folder / entry.file, entry)
        ),
        None,
    )


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint path: an existing file or any non-published string as it is; a published
    name as its local copy, downloaded into the cache on first use."""
    path = Path(name_or_path)
    entry = published(str(name_or_path))
    if entry is None or path.exists():
        return path
    return find_published(entry.name) or download([entry.name])[0]


def download(
    names: Iterable[str],
    cache_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    progress: bool = True,
    timeout_s: float = TIMEOUT_S,
) -> list[Path]:
    """Bring published checkpoints `names` into `cache_dir` (default `default_cache_dir()`) from
    `base_url` (default `TDMPC_RAY_CHECKPOINTS_URL`, else the paper's repository) and return
    their paths. Files already there and verified are kept; a partial download is resumed; a
    file whose sha256 does not match is deleted and refused with a `DownloadError`, as is a
    server silent for `timeout_s` seconds."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = (base_url or os.environ.get(BASE_URL_ENV) or BASE_URL).rstrip("/")
    entries = [_entry(name) for name in names]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in entries:
        dest = folder / entry.file
        with _locked(folder):
            if not _is_copy(dest, entry):
                _fetch(entry, f"{base}/{entry.file}", dest, progress, timeout_s)
        paths.append(dest)
    return paths


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder`, so concurrent processes never write one file twice."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fetch(
    entry: PublishedCheckpoint, url: str, dest: Path, progress: bool, timeout_s: float
) -> None:
    """Download `url` into `dest` through `dest.part` (resumed when present), verified."""
    part = dest.with_name(dest.name + ".part")
    have = _part_size(part)
    if have > entry.size:
        part.unlink()
        have = 0
    if have < entry.size:
        _transfer(url, part, have, entry.size, entry.name, progress, timeout_s)
    got = part.stat().st_size
    if got < entry.size:
        raise DownloadError(
            f"{url}: got {got} of {entry.size} bytes; run again to resume from {part}"
        )
    digest = sha256_file(part)
    if digest != entry.sha256:
        part.unlink()
        raise DownloadError(
            f"{url}: sha256 {digest[:16]}... is not the published {entry.sha256[:16]}...: "
            "refused and deleted (a corrupted file or the wrong mirror)"
        )
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)


def _part_size(part: Path) -> int:
    """Bytes already in the partial download `part` (0 when absent); a symlink or anything
    else that is not a regular file is removed, never followed."""
    try:
        info = part.lstat()
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(info.st_mode):
        part.unlink()
        return 0
    return info.st_size


def _open_part(part: Path, append: bool) -> BinaryIO:
    """`part` for writing, created as `open` creates files if absent; O_NOFOLLOW, so a symlink
    put there never redirects the download onto another file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    return os.fdopen(os.open(part, flags, 0o666), "ab" if append else "wb")


def _transfer(
    url: str, part: Path, have: int, size: int, desc: str, progress: bool, timeout_s: float
) -> None:
    """Append bytes `have..size` of `url` to `part` (a Range request when `have` > 0; a server
    that ignores it sends the whole file, which then replaces `part`). A server sending more
    than `size` bytes in all is cut off at the first byte too many and `part` deleted."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            start = _range_start(response.headers.get("Content-Range"))
            start = start if response.status == 206 else 0
            if start not in (0, have):
                raise DownloadError(f"{url}: server sent bytes from {start}, asked from {have}")
            with (
                _open_part(part, append=bool(start)) as f,
                tqdm(
                    total=size,
                    initial=start,
                    unit="B",
                    unit_scale=True,
                    desc=desc,
                    disable=not progress,
                ) as bar,
            ):
                left = size - start
                while block := response.read(min(1 << 16, left + 1)):
                    if len(block) > left:
                        f.close()
                        part.unlink()
                        raise DownloadError(
                            f"{url}: sent more than the published {size} bytes: cut off, deleted"
                        )
                    f.write(block)
                    left -= len(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:
        reason = str(getattr(err, "reason", None) or err).strip() or "connection lost"
        raise DownloadError(
            f"{url}: download failed ({type(err).__name__}: {reason}); run again to resume, "
            f"or set {BASE_URL_ENV} to a mirror"
        ) from None


def _range_start(content_range: str | None) -> int:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (content_range or "").strip())
    return int(match.group(1)) if match else -1
