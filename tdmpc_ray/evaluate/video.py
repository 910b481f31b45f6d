"""Episode videos as mp4 bytes, with imageio and its ffmpeg plugin (the `video` extra)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FPS = 15
"""Frames per second of episode videos (TD-MPC2's logger uses 15)."""
_MISSING = "writing videos needs imageio and imageio-ffmpeg: pip install 'tdmpc-ray[video]'"


def require_writer() -> None:
    """Fail with one clear line, before any work starts, when the mp4 writer is not installed."""
    try:
        import imageio.v3  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise ValueError(_MISSING) from None


def encode_mp4(frames: Sequence[np.ndarray], fps: int = FPS) -> bytes:
    """H.264 mp4 of RGB frames [H, W, 3] uint8."""
    require_writer()
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", np.stack(frames), extension=".mp4", fps=fps)
