"""device.reuse_freed_memory: freed large blocks are reused instead of page-faulted in again."""
import ctypes.util
import os
import subprocess
import sys

import pytest

from vco.device import ALLOCATOR_ENV, reuse_freed_memory

# A 24 MiB tensor (a weight's cast, an activation) allocated and freed; glibc's own account of
# where it came from: mallinfo2's hblkhd (bytes in mmapped blocks) and fordblks (free heap bytes).
PROBE = """
import ctypes, torch
from vco.device import reuse_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Info
applied = reuse_freed_memory()
x = torch.ones(6 << 20)
mapped = mallinfo2().hblkhd
del x
print(applied, mapped, mallinfo2().fordblks)
"""
MIB24 = 24 << 20


def probe(mode: str) -> tuple[bool, int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, ALLOCATOR_ENV: mode}).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") != "libc.so.6",
                    reason="the setting is glibc's")
def test_large_blocks_come_from_the_heap_and_stay_there_for_reuse():
    # glibc's default: the block is mapped on its own, and unmapped on free (its pages are then
    # faulted in again by the next allocation: ~50k page faults a vco-b16 step, ~500 with reuse)
    applied, mapped, free_after = probe("default")
    assert not applied and mapped >= MIB24
    # reuse: the block comes from the heap, and its memory stays there, free for the next one
    applied, mapped, free_after = probe("reuse")
    assert applied and mapped < MIB24 and free_after >= MIB24


def test_an_unknown_setting_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv(ALLOCATOR_ENV, "jemalloc")
    with pytest.raises(ValueError, match=f"{ALLOCATOR_ENV} must be 'reuse'.*'default'.*'jemalloc'"):
        reuse_freed_memory()


def test_default_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv(ALLOCATOR_ENV, "default")
    assert reuse_freed_memory() is False
