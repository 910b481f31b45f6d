"""`tdmpc-ray download [NAME ...]`: the paper's published students, sha256-checked, into a cache."""

from __future__ import annotations

import argparse

from tdmpc_ray.model.published import (
    BASE_URL,
    BASE_URL_ENV,
    CACHE_ENV,
    MIRROR_DIR_ENV,
    PUBLISHED,
    default_cache_dir,
    download,
    find_published,
    published,
)


def _download(args: argparse.Namespace) -> int:
    names = args.names or [p.name for p in PUBLISHED]
    if args.list:
        for entry in PUBLISHED:
            where = find_published(entry.name) or "not found locally"
            print(
                f"{entry.name:<14} {entry.file:<31} {entry.size / 2**20:4.1f} MiB  "
                f"{entry.description}\n{'':<14} {where}"
            )
        return 0
    paths = download(names, args.cache_dir, args.base_url, progress=True)
    print(f"\n{len(paths)} published student(s), sha256 checked:")
    for name, path in zip(names, paths, strict=True):
        print(f"  {published(name).name:<14} {path}")
    print(
        "use a name or a path wherever a checkpoint is expected, e.g. "
        f"tdmpc-ray eval --checkpoint {published(names[0]).name}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `download` verb."""
    names = ", ".join(p.name for p in PUBLISHED)
    p = subparsers.add_parser(
        "download",
        help="fetch the paper's published 1M students (sha256-checked, resumable)",
        description=f"Download the paper's published MT30 1M students ({names}; file names "
        "work too) into a cache folder: a partial download resumes, a file whose sha256 differs "
        "is refused and deleted. Every verb taking a checkpoint also takes these names and "
        "downloads on first use. Source: the paper's repository at a pinned commit "
        f"({BASE_URL}).",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="what to fetch (default: all)")
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help=f"where the files go (default ${CACHE_ENV}, else {default_cache_dir()})",
    )
    p.add_argument(
        "--base-url",
        metavar="URL",
        help=f"a mirror serving the same file names (default ${BASE_URL_ENV}, else the paper's "
        "repository)",
    )
    p.add_argument(
        "--list",
        action="store_true",
        help=f"list the names and local copies (cache, then ${MIRROR_DIR_ENV} or ../shared) "
        "without downloading",
    )
    p.set_defaults(handler=_download)
