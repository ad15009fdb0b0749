"""Lazy package attributes (PEP 562): a package names its public objects and the modules that define them, and
each module is imported on first access, so that importing the package stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any


def lazy_attributes(
    package: str, names: dict[str, str], eager: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: the package's ``__name__`` (for the error message).
        names: public name -> module that defines it.
        eager: names the package defines itself (listed by ``dir``).
    """
    public = sorted({*eager, *names})

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return public

    return __getattr__, __dir__
