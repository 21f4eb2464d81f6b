"""Rendering: composed video frames and mp4 encoding."""
