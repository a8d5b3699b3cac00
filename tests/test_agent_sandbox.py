"""The Python tool's sandbox against the known escapes of in-process executors. Each program
tries one escape and prints ESCAPED if it worked; the sandbox must stop every one."""
import os
import time

import pytest

from llmlab.agent.builtin import python
from llmlab.eval.sandbox import run_program

SECRET_ENV = "LLMLAB_TEST_SECRET"

ESCAPES = {
    "subclasses_walk": """
for c in ().__class__.__base__.__subclasses__():
    if c.__name__ == '_wrap_close':
        os_mod = c.__init__.__globals__['__builtins__']['__import__']('os')
        print(open('{outside}').read()); print('ESCAPED')
""",
    "globals_walk": """
g = (lambda: 0).__globals__['__builtins__']
imp = g['__import__'] if isinstance(g, dict) else g.__import__
print(imp('os').listdir('{outside_dir}')); print('ESCAPED')
""",
    "obfuscated_import": """
m = __import__(''.join(map(chr, [111, 115])))
print(m.popen('cat {outside}').read() or 'x' + ''); print('ESCAPED' if m.popen('cat {outside}').read() else '')
""",
    "ctypes_libc": """
import ctypes
libc = ctypes.CDLL(None)
fd = libc.open(b'{outside}', 0)
print('ESCAPED' if fd >= 0 else 'blocked')
""",
    "env_vars": """
import os
print('ESCAPED' if any('{secret}' in v for v in os.environ.values()) else 'clean')
""",
    "parent_environ": """
import os
data = open('/proc/%d/environ' % os.getppid(), 'rb').read()
print('ESCAPED' if b'{secret}' in data else 'no')
""",
    "read_outside_file": "print(open('{outside}').read()); print('ESCAPED')",
    "write_outside": "open('{outside_dir}/planted.txt', 'w').write('x'); print('ESCAPED')",
    "socket": """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect(('127.0.0.1', 1)); print('ESCAPED')
""",
    "raw_socket_via_ctypes": """
import ctypes
libc = ctypes.CDLL(None)
fd = libc.socket(2, 1, 0)
import struct
addr = struct.pack('<HH4s8x', 2, 0x5000, bytes([127, 0, 0, 1]))
rc = libc.connect(fd, addr, len(addr))
print('ESCAPED' if fd >= 0 and rc == 0 else 'blocked')
""",
    "fork_bomb": """
import os
n = 0
try:
    for _ in range(50):  # bounded: a real bomb would loop forever
        if os.fork() == 0:
            os._exit(0)
        n += 1
except OSError:
    pass
print('ESCAPED' if n else 'blocked')
""",
    "subprocess": "import subprocess; print(subprocess.run(['cat', '{outside}'], capture_output=True).stdout); print('ESCAPED')",
}


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    d = tmp_path_factory.mktemp("outside")
    (d / "secret.txt").write_text("TOP SECRET")
    return d


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_is_stopped(name, outside, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cr3t-value")
    code = ESCAPES[name].format(outside=outside / "secret.txt", outside_dir=outside, secret="s3cr3t-value")
    r = run_program(code, timeout_s=10, cpu_s=5, mem_mb=256)
    assert "ESCAPED" not in r.stdout, (name, r)
    assert "TOP SECRET" not in r.stdout
    assert not (outside / "planted.txt").exists()


def test_python_tool_works_and_reports_errors():
    assert python("print(sum(range(101)))") == "5050"
    assert "ZeroDivisionError" in python("print(1/0)")
    r = run_program("while True: pass", timeout_s=1, cpu_s=1)
    assert r.status == "timeout"
    assert python("x = 1") == "(no output: print the result)"
    with open(os.devnull) as f:  # the sandbox's own dir is writable
        assert f and python("open('a.txt','w').write('hi'); print(open('a.txt').read())") == "hi"


def test_per_call_overhead_is_measured():
    t = time.perf_counter()
    for _ in range(3):
        assert run_program("pass").passed
    per_call = (time.perf_counter() - t) / 3
    print(f"sandbox per-call overhead: {per_call * 1000:.0f} ms")
    assert per_call < 5.0
