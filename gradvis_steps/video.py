"""Step: encode frames (PNG) into an mp4 video (H.264, yuv420p).

    python -m gradvis_steps.video --frames results/run/frames/*.png --fps 10 --out results/run/training.mp4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradvis_steps.video", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--frames", nargs="+", required=True, help="frame files in order, or one folder of PNGs")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second")
    parser.add_argument("--out", required=True, type=cli.output_file, help="mp4 file to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .render.video import count_frames, encode_mp4

    args = build_parser().parse_args(argv)
    frames = [Path(f) for f in args.frames]
    if len(frames) == 1 and frames[0].is_dir():
        frames = sorted(frames[0].glob("*.png"))
    out = encode_mp4(frames, args.out, fps=args.fps)
    print(f"wrote {out} ({count_frames(out)} frames at {args.fps:g} fps)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
