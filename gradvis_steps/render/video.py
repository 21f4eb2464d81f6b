"""Encode a sequence of PNG frames to an H.264 mp4 with ffmpeg-python.

The ffmpeg binary is the one on PATH (e.g. Debian's ``ffmpeg``) or, with no root needed, the one
shipped inside the ``imageio-ffmpeg`` wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..storage.atomic import atomic_path
from ..storage.failures import OutputError, write_cause


def ffmpeg_executable() -> str:
    """Path of an ffmpeg binary: PATH first, then imageio-ffmpeg's bundled build."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        raise FileNotFoundError(
            "no ffmpeg found: install Debian's `ffmpeg` package or `pip install imageio-ffmpeg`"
        ) from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def encode_mp4(frames: Sequence[str | os.PathLike], out: str | os.PathLike, fps: float = 10.0) -> Path:
    """Write ``frames`` (PNG files of equal size, in order) as an H.264/yuv420p mp4, atomically.

    Frames are linked into a numbered sequence in a temporary folder so any file names work; the
    scale filter rounds odd sizes down to even ones, which yuv420p requires.
    """
    import ffmpeg

    if not frames:
        raise ValueError("no frames to encode")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    missing = [str(f) for f in frames if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"missing frame files: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="gradvis-frames-") as tmp:
        for index, frame in enumerate(frames):
            os.symlink(Path(frame).resolve(), Path(tmp) / f"{index:06d}.png")
        with atomic_path(out, suffix=".mp4") as target:
            stream = (
                ffmpeg.input(str(Path(tmp) / "%06d.png"), framerate=fps)
                .filter("scale", "trunc(iw/2)*2", "trunc(ih/2)*2")
                .output(str(target), vcodec="libx264", pix_fmt="yuv420p", r=fps, movflags="+faststart")
                .overwrite_output()
            )
            try:
                stream.run(cmd=ffmpeg_executable(), quiet=True)
            except ffmpeg.Error as error:
                tail = (error.stderr or b"").decode(errors="replace")[-2000:]
                cause = write_cause(OSError(tail))  # ffmpeg's own words for a full disk, a read-only folder
                if cause is not None:
                    raise OutputError(out, cause) from None
                raise RuntimeError(f"ffmpeg failed to encode {out}:\n{tail}") from None
    return out


def count_frames(path: str | os.PathLike) -> int:
    """Number of video frames in a file, by decoding it (ffprobe when present, else imageio-ffmpeg)."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe:
        result = subprocess.run(
            [ffprobe, "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
             "stream=nb_read_frames,codec_name,pix_fmt", "-of", "json", str(path)],
            capture_output=True, text=True, check=True,
        )
        return int(json.loads(result.stdout)["streams"][0]["nb_read_frames"])
    import imageio_ffmpeg

    return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
