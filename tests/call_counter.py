"""Count how often real functions run, without replacing them.

:class:`CallCounter` watches Python's profiler hook for the code objects of the functions
it is given: nothing is patched, wrapped or mocked, so the code under test and its
libraries run exactly as they do in production, and a call made through any alias
(``from x import f``, a bound method, a subclass inheriting it) is counted too."""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any


class CallCounter:
    """``with CallCounter(name=function, ...) as calls: ...`` then ``calls["name"]``.

    A name may stand for several functions (a tuple): their calls add up. ``when``
    (optional) maps a name to a predicate of the call's arguments (the frame's locals at
    entry): only calls it accepts are counted."""

    def __init__(
        self,
        when: dict[str, Callable[[dict[str, Any]], bool]] | None = None,
        **functions: Any,
    ) -> None:
        self._codes: dict[Any, list[str]] = {}
        for name, fns in functions.items():
            for fn in fns if isinstance(fns, tuple) else (fns,):
                fn = getattr(fn, "__func__", fn)  # classmethods and bound methods
                self._codes.setdefault(fn.__code__, []).append(name)
        self._when = when or {}
        self.counts: Counter[str] = Counter()

    def _hook(self, frame, event, arg):
        if event != "call":
            return
        names = self._codes.get(frame.f_code)
        if names is None:
            return
        for name in names:
            accept = self._when.get(name)
            if accept is None or accept(frame.f_locals):
                self.counts[name] += 1

    def __enter__(self) -> Counter[str]:
        self._previous = sys.getprofile()
        threading.setprofile(self._hook)
        sys.setprofile(self._hook)
        return self.counts

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(self._previous)
        threading.setprofile(None)
