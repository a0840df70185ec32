"""The CPU settings: glibc's freed-memory reuse."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Allocates and frees a 64 MiB block, allocates it again and prints how many mappings that second allocation added.
_REUSE_PROBE = """
import ctypes, sys
from titlegen.cpu import keep_freed_memory_in_process
if sys.argv[1] == "keep":
    assert keep_freed_memory_in_process()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def mappings():
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)
block = libc.malloc(64 << 20); libc.free(block)
before = mappings()
block = libc.malloc(64 << 20)
print(mappings() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's; elsewhere it reports False")
def test_keep_freed_memory_reuses_a_freed_block_instead_of_mapping_a_fresh_one():
    def new_mappings(mode):
        result = subprocess.run([sys.executable, "-c", _REUSE_PROBE, mode], capture_output=True, text=True, check=True)
        return int(result.stdout)

    assert new_mappings("default") == 1  # glibc maps a block this large afresh for every allocation
    assert new_mappings("keep") == 0
