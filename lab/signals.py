"""SIGTERM as a note instead of death: the one handler the pipeline runner (which relays it
to its stage) and a training fit (which checkpoints and stops) both install.

Only the standard library here: ``lab run --help`` and the runner import this module.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any, Callable


class SigtermWatch:
    """Notes SIGTERM instead of dying, for the duration of a ``with`` block.

    Signal handlers can only be set from the main thread; in another thread the watch
    installs nothing and SIGTERM keeps its default effect (``installed`` is False). A
    handler that was in place before is still called after the note, so a process that
    relays SIGTERM (``lab run``'s relay to its stage) keeps doing so; it is put back on
    exit. ``on_signal()``, when given, is called after each note (e.g. to pass SIGTERM on
    to worker processes the fit started).
    """

    def __init__(self, on_signal: Callable[[], None] | None = None) -> None:
        self.received_at: float | None = None
        self.installed = False
        self.on_signal = on_signal
        self._previous: Any = None

    @property
    def requested(self) -> bool:
        """Whether SIGTERM arrived while the watch was on."""
        return self.received_at is not None

    def __enter__(self) -> "SigtermWatch":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
            self.installed = True
        return self

    def _note(self, signum: int, frame: Any) -> None:
        if self.received_at is None:
            self.received_at = time.time()
        if self.on_signal is not None:
            self.on_signal()
        if callable(self._previous):
            self._previous(signum, frame)

    def __exit__(self, *exc_info: Any) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self.installed = False
