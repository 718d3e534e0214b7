"""Shared helpers of the Python interop peers (see ../interop_python.rs).

Every peer prints its results as plain lines on stdout, flushed at once, for the Rust side to
read and compare exactly. Message contents are made by the same formulas on both sides.
"""

from __future__ import annotations

import signal
import sys

# Message sizes tried in both directions: the frame length encodings' edges (125/126,
# 65535/65536), then large messages.
SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20, 16 << 20]

# Non-ASCII texts: 2-, 3- and 4-byte UTF-8 sequences, and one long enough (70,000 bytes) that
# characters straddle read-buffer boundaries.
NON_ASCII = [
    "héllo wörld",
    "ελληνικά κείμενο",
    "中文字符测试",
    "emoji 🚀🦀✓",
    "aé中🦀" * 7000,
]


def binary_payload(size: int) -> bytes:
    """Byte i is (31 * i + 7) mod 256."""
    return bytes((31 * i + 7) & 0xFF for i in range(256)) * (size // 256) + bytes(
        (31 * i + 7) & 0xFF for i in range(size % 256)
    )


def text_payload(size: int) -> str:
    """Character i is the printable ASCII character 0x20 + (7 * i mod 95); `size` bytes."""
    period = "".join(chr(0x20 + (7 * i) % 95) for i in range(95))
    return (period * (size // 95 + 1))[:size]


def report(*parts: object) -> None:
    """One result line on stdout, flushed at once."""
    print(*parts, flush=True)


def die_with_parent() -> None:
    """Asks Linux to kill this process when the test that started it dies, however it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except Exception:  # not Linux: the test's guard still kills us
        pass


def setup() -> None:
    die_with_parent()
    sys.stdout.reconfigure(encoding="utf-8", line_buffering=True)
