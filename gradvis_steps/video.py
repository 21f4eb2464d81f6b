"""Step: encode frames (PNG) into an mp4 video (H.264, yuv420p).

    python -m gradvis_steps.video --frames results/run/frames/*.png --fps 8 --out results/run/training.mp4
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from . import cli, step_settings
from .defaults import schema_default


@dataclass(frozen=True, kw_only=True)
class VideoSettings:
    """Settings of the video step: the frames (files in order, or one folder of PNGs), the rate, the mp4 to write."""

    frames: tuple[str, ...]
    out: str
    fps: float = float(schema_default("frames.fps"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.video", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--frames", nargs="+", required=True, help="frame files in order, or one folder of PNGs")
    parser.add_argument("--fps", type=float, help="frames per second")
    parser.add_argument("--out", required=True, type=cli.output_file, help="mp4 file to write")
    return step_settings.use_defaults(parser, VideoSettings)


def main(argv: list[str] | None = None) -> int:
    run(step_settings.parse(build_parser(), VideoSettings, argv))
    return 0


def run(settings: VideoSettings) -> Path:
    """Encode the frames of ``settings`` into ``settings.out``; returns the video's path."""
    from .render.video import count_frames, encode_mp4

    cli.check_outputs(files=(settings.out,))
    frames = [Path(f) for f in settings.frames]
    if len(frames) == 1 and frames[0].is_dir():
        frames = sorted(frames[0].glob("*.png"))
    out = encode_mp4(frames, settings.out, fps=settings.fps)
    print(f"wrote {out} ({count_frames(out)} frames at {settings.fps:g} fps)", file=sys.stderr)
    return out


if __name__ == "__main__":
    sys.exit(cli.run(main))
