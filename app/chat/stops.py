"""Stop strings: cut the reply at the first one, also when its text arrives in pieces."""

from __future__ import annotations

from collections.abc import Sequence


class StopFilter:
    """Feed text deltas; get back the part that is safe to show.

    A delta may end with the first characters of a stop string, so the last len(longest stop) - 1
    characters are held back until the next delta shows whether a stop string completes there. Once
    one does, the text before it is released and everything after is dropped.
    """

    def __init__(self, stops: Sequence[str] | None):
        self.stops = [s for s in (stops or []) if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.buffer += text
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buffer, self.stopped = self.buffer[: min(hits)], "", True
            return out
        safe = max(0, len(self.buffer) - self.hold)
        out, self.buffer = self.buffer[:safe], self.buffer[safe:]
        return out

    def flush(self) -> str:
        """The held-back text once the generation has ended without a stop string."""
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out
