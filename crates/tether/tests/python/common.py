"""Shared helpers of the Python interop peers (see ../interop_python.rs).

Every peer prints its results as plain lines on stdout, flushed at once, for the Rust side to
read and compare exactly. Message contents are made by the same formulas on both sides.
"""

from __future__ import annotations

import random
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


# Sizes of the compression tests (permessage-deflate on): up to 1 MiB, both kinds of content.
COMPRESSION_SIZES = [0, 1, 125, 126, 4096, 65535, 65536, 1 << 20]


def json_text(size: int) -> str:
    """JSON-like lines, repeated and cut to `size` bytes (ASCII): compresses well."""
    lines = []
    total = 0
    i = 0
    while total < size:
        line = f'{{"seq":{i},"symbol":"TETH-USD","price":{(i * 7919) % 100003},"ok":true}}\n'
        lines.append(line)
        total += len(line)
        i += 1
    return "".join(lines)[:size]


def random_bytes(size: int, seed: int) -> bytes:
    """Pseudo-random bytes: do not compress."""
    return random.Random(seed).randbytes(size)


def compression_mode(name: str) -> str | None:
    """The `compression` argument of websockets' serve() and connect() for a command-line
    word: `deflate` (websockets' default, permessage-deflate on) or `none`."""
    modes = {"deflate": "deflate", "none": None}
    if name not in modes:
        raise SystemExit(f"unknown compression mode {name!r}: deflate or none")
    return modes[name]


def describe_extensions(extensions: list[object]) -> str:
    """The extensions a connection negotiated, as one line for the Rust side to compare:
    `negotiated none`, or per extension its name and the parameters websockets applies."""
    if not extensions:
        return "negotiated none"
    parts = []
    for ext in extensions:
        params = " ".join(
            f"{key}={getattr(ext, key)}"
            for key in (
                "local_no_context_takeover",
                "remote_no_context_takeover",
                "local_max_window_bits",
                "remote_max_window_bits",
            )
            if hasattr(ext, key)
        )
        parts.append(f"{ext.name} {params}".strip())
    return "negotiated " + ", ".join(parts)


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
