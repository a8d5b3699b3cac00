"""A seccomp-BPF filter that forbids new processes (`man 2 seccomp`): fork, vfork and clone
without CLONE_THREAD fail with EAGAIN (threads stay allowed); clone3 fails with ENOSYS, which makes
glibc fall back to clone for threads. RLIMIT_NPROC cannot do this when the evaluator runs as root
(root is exempt), a filter can. Needs no_new_privs (set by llmlab.eval.landlock or here).
Returns True if installed (x86-64 and arm64; elsewhere nothing happens)."""
from __future__ import annotations

import ctypes
import errno
import platform
import struct

# arch id (AUDIT_ARCH_*), fork, vfork (None: no such syscall), clone, clone3
_ARCH = {"x86_64": (0xC000003E, 57, 58, 56, 435), "aarch64": (0xC00000B7, None, None, 220, 435)}
_LD, _JEQ, _JSET, _RET = 0x20, 0x15, 0x45, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
_CLONE_THREAD = 0x00010000
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2


def _program(arch: int, fork, vfork, clone: int, clone3: int) -> list[tuple[int, int, int, int]]:
    """BPF with symbolic jump targets resolved to relative offsets at the end."""
    checks = [(nr, "DENY") for nr in (fork, vfork) if nr is not None] + [(clone3, "NOSYS")]
    prog = [(_LD, None, None, 4), (_JEQ, 0, "ALLOW", arch), (_LD, None, None, 0)]  # arch, then nr
    prog += [(_JEQ, target, 0, nr) for nr, target in checks]
    prog += [(_JEQ, 0, "ALLOW", clone),
             (_LD, None, None, 16), (_JSET, "ALLOW", "DENY", _CLONE_THREAD)]  # clone's flags (args[0] low word)
    labels = {"ALLOW": len(prog), "DENY": len(prog) + 1, "NOSYS": len(prog) + 2}
    prog += [(_RET, None, None, _ALLOW), (_RET, None, None, _ERRNO | errno.EAGAIN), (_RET, None, None, _ERRNO | errno.ENOSYS)]

    def off(pos, t):
        return 0 if t is None else (labels[t] - pos - 1 if isinstance(t, str) else t)
    return [(code, off(i, jt), off(i, jf), k) for i, (code, jt, jf, k) in enumerate(prog)]


def forbid_processes() -> bool:
    spec = _ARCH.get(platform.machine())
    if spec is None:
        return False
    prog = _program(*spec)
    raw = b"".join(struct.pack("<HBBI", *i) for i in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("<HxxxxxxQ", len(prog), ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, fbuf, 0, 0) == 0
