"""Video encoding: a real mp4 that a decoder reads back with the right frame count and codec."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from gradvis_steps import video as video_step  # noqa: E402
from gradvis_steps.render.video import count_frames, encode_mp4  # noqa: E402


def write_frames(folder, n, size=(3.03, 2.01)):
    folder.mkdir()
    paths = []
    for i in range(n):
        fig, ax = plt.subplots(figsize=size, dpi=50)  # odd pixel sizes on purpose
        ax.plot([0, i], [0, i])
        path = folder / f"f{i}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def test_encode_mp4_has_all_frames(tmp_path):
    frames = write_frames(tmp_path / "frames", 7)
    out = encode_mp4(frames, tmp_path / "movie.mp4", fps=5)
    assert out.stat().st_size > 0
    assert count_frames(out) == 7
    assert not list(tmp_path.glob(".movie.mp4*"))  # no temporary left behind


def test_video_step_from_folder(tmp_path):
    write_frames(tmp_path / "frames", 4)
    assert video_step.main(["--frames", str(tmp_path / "frames"), "--fps", "2", "--out", str(tmp_path / "v.mp4")]) == 0
    assert count_frames(tmp_path / "v.mp4") == 4


def test_encode_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        encode_mp4([], tmp_path / "x.mp4")
    with pytest.raises(FileNotFoundError, match="missing frame files"):
        encode_mp4([tmp_path / "nope.png"], tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()
