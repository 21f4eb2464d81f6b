"""Rendering: landscape and spectrum figures, composed video frames and mp4 encoding (matplotlib, ffmpeg)."""
