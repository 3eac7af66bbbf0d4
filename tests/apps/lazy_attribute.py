"""A module whose ``__getattr__`` fails for ``app``: an error inside the app's own code."""

from __future__ import annotations


def __getattr__(name: str) -> object:
    if name == "app":
        raise RuntimeError("lazy app construction failed")
    raise AttributeError(name)
