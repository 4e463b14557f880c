"""Directories for servers and runs."""

import tempfile


def short_tmpdir(prefix: str) -> str:
    """Unix socket paths are limited to ~100 characters: keep run dirs short."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")
