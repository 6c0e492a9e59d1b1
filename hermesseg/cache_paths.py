"""Where hermesseg keeps caches: ``$HERMESSEG_CACHE``, else ``$XDG_CACHE_HOME/hermesseg``, else ``~/.cache/hermesseg``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(kind: str) -> Path:
    """The cache folder for ``kind`` (``samples``, ``training``...)."""
    root = os.environ.get("HERMESSEG_CACHE")
    if root:
        return Path(root).expanduser() / kind
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "hermesseg" / kind
