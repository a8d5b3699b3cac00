"""Landlock (Linux >= 5.13; `man 7 landlock`): an unprivileged process restricts itself, and every
child it will ever have, to the files it names -- the second wall of the code sandbox.

`restrict(read_paths, write_paths)` allows reading and executing beneath `read_paths`, everything
beneath `write_paths`, and nothing else: no other file can be opened, listed, created or
executed (so no ~/.ssh, no /proc/<parent>/environ, no project files). Where the kernel's Landlock
ABI allows it also: no TCP bind/connect (ABI 4), no abstract Unix sockets and no signals to
processes outside the sandbox (ABI 6). Returns the ABI version used (0: Landlock unavailable, nothing
restricted). Runs in the child between fork and exec; x86-64 and arm64 syscall numbers.
"""
from __future__ import annotations

import ctypes
import os
import platform
import struct

_SYS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
_EXEC, _WRITE, _READ, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_TRUNCATE, _IOCTL_DEV = 1 << 14, 1 << 15
_FILE_RIGHTS = _EXEC | _WRITE | _READ | _TRUNCATE | _IOCTL_DEV
_PR_SET_NO_NEW_PRIVS = 38


def _all_fs_rights(abi: int) -> int:
    bits = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
    if abi >= 2:
        bits |= 1 << 13  # REFER
    if abi >= 3:
        bits |= _TRUNCATE
    if abi >= 5:
        bits |= _IOCTL_DEV
    return bits


def restrict(read_paths: list[str], write_paths: list[str]) -> int:
    nums = _SYS.get(platform.machine())
    if nums is None:
        return 0
    create, add_rule, restrict_self = nums
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(create, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return 0
    fs = _all_fs_rights(abi)
    attr = struct.pack("<QQQ", fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)  # net: bind|connect; scope: unix|signal
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    buf = ctypes.create_string_buffer(attr[:size], size)
    ruleset = libc.syscall(create, buf, ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return 0
    try:
        read = _EXEC | _READ | _READ_DIR | (_IOCTL_DEV if abi >= 5 else 0)
        for paths, rights in ((read_paths, read), (write_paths, fs)):
            for p in paths:
                try:
                    fd = os.open(p, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    allowed = rights if os.path.isdir(p) else rights & _FILE_RIGHTS & fs
                    rule = ctypes.create_string_buffer(struct.pack("<Qi", allowed, fd), 12)
                    if libc.syscall(add_rule, ctypes.c_int(ruleset), ctypes.c_int(1), rule, ctypes.c_uint32(0)) < 0:
                        raise OSError(ctypes.get_errno(), f"landlock_add_rule({p})")
                finally:
                    os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS)")
        if libc.syscall(restrict_self, ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi
