"""Incremental detokenization with stop strings, for streaming.

Tokens arrive as byte pieces (byte-level BPE can split one character over several tokens), so
text is released only up to the last complete UTF-8 character (`Utf8Stream`), and text that
could still turn into a stop string is held back until it either matches (the output ends
before the stop string) or cannot anymore.
"""
from __future__ import annotations


class Utf8Stream:
    """Turns a stream of token bytes into text without ever emitting half a multibyte character."""

    def __init__(self):
        self.buf = b""

    def push(self, data: bytes) -> str:
        self.buf += data
        # keep an incomplete trailing sequence (at most 3 bytes) for the next push
        for cut in range(len(self.buf), max(len(self.buf) - 4, -1), -1):
            try:
                text = self.buf[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.buf = self.buf[cut:]
            return text
        text = self.buf.decode("utf-8", errors="replace")  # invalid bytes: don't stall forever
        self.buf = b""
        return text

    def flush(self) -> str:
        text = self.buf.decode("utf-8", errors="replace")
        self.buf = b""
        return text


class TextStream:
    """Bytes in, (text delta, stopped) out. `text` is everything released so far."""

    def __init__(self, stop: tuple[str, ...] = ()):
        self.utf8, self.stop = Utf8Stream(), tuple(stop)
        self.pending = ""  # decoded but not yet released (may be the start of a stop string)
        self.text = ""

    def _release(self, final: bool) -> tuple[str, bool]:
        for s in self.stop:
            i = self.pending.find(s)
            if i >= 0:
                out, self.pending = self.pending[:i], ""
                self.text += out
                return out, True
        keep = 0
        if not final:  # longest suffix of pending that is a proper prefix of some stop string
            for s in self.stop:
                for n in range(min(len(s) - 1, len(self.pending)), keep, -1):
                    if self.pending.endswith(s[:n]):
                        keep = n
                        break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        self.text += out
        return out, False

    def push(self, data: bytes) -> tuple[str, bool]:
        self.pending += self.utf8.push(data)
        return self._release(final=False)

    def finish(self) -> str:
        self.pending += self.utf8.flush()
        return self._release(final=True)[0]
