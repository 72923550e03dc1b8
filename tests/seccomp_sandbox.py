"""Run a command under the seccomp filters systemd builds for kws.service, without systemd.

There is no systemd (PID 1) on the test machines, so tests/test_systemd.py cannot start the
unit; this applies the two parts of its sandbox that decide whether kws can run at all:

* ``--syscalls FILE``: an allow-list of system call names (one per line), everything else
  failing with EPERM: what ``SystemCallFilter=`` with ``SystemCallErrorNumber=EPERM`` does.
  Built with libseccomp (through ctypes), as systemd builds it.
* ``--mdwe``: systemd 252's ``MemoryDenyWriteExecute=yes`` filter: EPERM for ``mmap`` with
  PROT_WRITE|PROT_EXEC, ``mprotect``/``pkey_mprotect`` with PROT_EXEC, ``shmat`` with SHM_EXEC
  (a hand-written BPF program; x86-64 and aarch64).

``syscall_allowlist(unit_text)`` turns the unit's ``SystemCallFilter=`` lines into the list,
expanding the @groups with ``systemd-analyze syscall-filter``.

    python seccomp_sandbox.py [--mdwe] [--syscalls FILE] -- COMMAND [ARG...]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import os
import platform
import re
import struct
import subprocess
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000

# AUDIT_ARCH_*, then the numbers of mmap, mprotect, pkey_mprotect, shmat
_MDWE_ARCH = {"x86_64": (0xC000003E, 9, 10, 329, 30), "aarch64": (0xC00000B7, 222, 226, 288, 196)}


def mdwe_supported() -> bool:
    return platform.machine() in _MDWE_ARCH


def syscall_groups() -> dict[str, list[str]]:
    """``systemd-analyze syscall-filter``: group name -> its members (system calls and @groups)."""
    text = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True, text=True,
                          check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
        elif not line.startswith(" "):
            current = None
    return groups


def _expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= _expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def syscall_allowlist(unit_text: str) -> set[str]:
    """The system calls the unit's ``SystemCallFilter=`` lines allow (they must start with an allow-list)."""
    groups = syscall_groups()
    allowed: set[str] | None = None
    for value in re.findall(r"^SystemCallFilter=(.*)$", unit_text, re.M):
        deny = value.startswith("~")
        names = _expand(value.lstrip("~").split(), groups)
        if allowed is None:
            if deny:
                raise ValueError("the first SystemCallFilter= is a deny-list; this helper handles allow-lists")
            allowed = set()
        allowed = allowed - names if deny else allowed | names
    if allowed is None:
        raise ValueError("the unit has no SystemCallFilter=")
    return allowed


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    return libc


def install_mdwe_filter() -> None:
    """systemd 252's MemoryDenyWriteExecute=yes, as a classic BPF seccomp program."""
    audit_arch, nr_mmap, nr_mprotect, nr_pkey_mprotect, nr_shmat = _MDWE_ARCH[platform.machine()]
    ld_abs, jeq, jset, alu_and, ret = 0x20, 0x15, 0x45, 0x54, 0x06
    arg2 = 16 + 2 * 8  # offsetof(struct seccomp_data, args[2]), its low 32 bits (little-endian)
    deny = SECCOMP_RET_ERRNO | errno.EPERM

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    program = [  # jumps are relative: target = index + 1 + offset
        op(ld_abs, 0, 0, 4),                           # 0  arch
        op(jeq, 0, 13, audit_arch),                    # 1  another arch -> 15 allow
        op(ld_abs, 0, 0, 0),                           # 2  syscall number
        op(jeq, 4, 0, nr_mmap),                        # 3  -> 8
        op(jeq, 6, 0, nr_mprotect),                    # 4  -> 11
        op(jeq, 5, 0, nr_pkey_mprotect),               # 5  -> 11
        op(jeq, 6, 0, nr_shmat),                       # 6  -> 13
        op(ret, 0, 0, SECCOMP_RET_ALLOW),              # 7
        op(ld_abs, 0, 0, arg2),                        # 8  mmap's prot
        op(alu_and, 0, 0, PROT_WRITE | PROT_EXEC),     # 9
        op(jeq, 5, 4, PROT_WRITE | PROT_EXEC),         # 10 both -> 16 deny, else -> 15 allow
        op(ld_abs, 0, 0, arg2),                        # 11 mprotect's prot
        op(jset, 3, 2, PROT_EXEC),                     # 12 exec -> 16 deny, else -> 15 allow
        op(ld_abs, 0, 0, arg2),                        # 13 shmat's flags
        op(jset, 1, 0, SHM_EXEC),                      # 14 exec -> 16 deny, else -> 15 allow
        op(ret, 0, 0, SECCOMP_RET_ALLOW),              # 15
        op(ret, 0, 0, deny),                           # 16
    ]
    code = ctypes.create_string_buffer(b"".join(program))
    fprog = ctypes.create_string_buffer(struct.pack("HxxxxxxQ", len(program), ctypes.addressof(code)))
    libc = _libc()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot install the MemoryDenyWriteExecute filter")


def install_syscall_allowlist(names: set[str]) -> None:
    """Allow ``names``, EPERM for every other system call of this architecture (libseccomp)."""
    path = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    lib = ctypes.CDLL(path, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SECCOMP_RET_ERRNO | errno.EPERM)
    if not ctx:
        raise OSError("seccomp_init failed")
    for name in sorted(names):
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number == -1:  # __NR_SCMP_ERROR: unknown to libseccomp
            continue
        lib.seccomp_rule_add(ctx, SECCOMP_RET_ALLOW, number, 0)  # (fails harmlessly for other arches' calls)
    result = lib.seccomp_load(ctx)
    if result != 0:
        raise OSError(-result, "seccomp_load failed")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mdwe", action="store_true", help="MemoryDenyWriteExecute=yes")
    parser.add_argument("--syscalls", help="file with the allowed system calls, one per line")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.mdwe:
        install_mdwe_filter()
    if args.syscalls:
        with open(args.syscalls) as file:
            install_syscall_allowlist({line.strip() for line in file if line.strip()})
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
