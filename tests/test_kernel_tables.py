"""The kernel tables of csrc/cuda/kernel_config.h against the CUDA tests' size lists:
read from the header, no GPU needed (the CUDA tests that use the lists run on a GPU
only, so a list that falls behind a table change is caught here, on every machine)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

KERNEL_CONFIG = Path(__file__).resolve().parent.parent / "csrc" / "cuda" / "kernel_config.h"


# Shifted rows (N not a multiple of the vector) on cards of faster memory take tables of
# their own (kernel_config.h k*ShiftedChanges*FastMemory): the first and last shifted N of
# each changed range (rows of (N + VEC - 1) elements' bytes between the entry before it and
# its own max_row_bytes), and the N each entry was measured at.
SHIFTED_FAST_MEMORY_NS = {
    2: [762, 1017, 2042, 2297, 3066, 3071, 3577, 4090, 4099, 4601, 6138, 6143, 7161, 8186,
        8191, 9209, 9210, 10001, 12281, 12282, 12287, 13305],
    4: [510, 767, 1021, 1022, 1535, 1789, 3070, 3071, 3325, 4093, 4094, 4099, 4157, 4158,
        4605, 5118, 5119, 5629, 6142, 6143, 6653, 8190, 8191, 8701, 12286, 12287, 12797],
}


def _shifted_change_row_bytes(width):
    """max_row_bytes of the shifted-row changes of cards of faster memory for 16- or
    32-bit rows, read from kernel_config.h (forward and backward arrays alike)."""
    text = KERNEL_CONFIG.read_text()
    out = set()
    for body in re.findall(r"k\w+ShiftedChanges%d\w*FastMemory\[\] = \{(.*?)\n\};" % width,
                           text, re.S):
        out.update(int(m) for m in re.findall(r"\{(\d+),", body))
    return sorted(out)


@pytest.mark.parametrize("size", [2, 4])
def test_shifted_sizes_follow_the_tables(size):
    """SHIFTED_FAST_MEMORY_NS holds the last shifted N of every changed entry's range (the
    largest N off the vector whose (N + VEC - 1) elements fit the entry): a table change
    that leaves a new range without its edge fails here, not silently."""
    vec = 16 // size
    row_bytes = _shifted_change_row_bytes(16 if size == 2 else 32)
    assert len(row_bytes) >= 6, row_bytes
    for b in row_bytes:
        last = b // size - vec + 1
        while last % vec == 0:
            last -= 1
        assert last in SHIFTED_FAST_MEMORY_NS[size], (b, last)
