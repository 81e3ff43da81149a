"""Sizes and rates as people write them ("48MB", "500K/s") -> bytes: the one parser every command uses.

Units are binary, as `free -m` and systemd's MemoryMax count: K = KB = KiB = 1024 bytes, M = 2**20,
G = 2**30; B or nothing means bytes. Case and spaces do not matter.

Example:
    >>> parse_bytes("48MB"), parse_bytes("0.5 GiB"), parse_bytes(4096), parse_rate("500K/s")
    (50331648, 536870912, 4096, 512000)
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
          "G": 2**30, "GB": 2**30, "GIB": 2**30}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([A-Z]*)")
# Beyond any board's memory or link: a bound on what a typo ("48TB", "1e30") can ask for.
_MAX = 2**50


def parse_bytes(value: int | str, what: str = "a size") -> int:
    """A positive number of bytes: an int, or a string such as "4194304", "48MB", "48 MiB", "0.5GB".

    Raises ValueError naming `what` and the value received otherwise (zero, negative, unknown unit)."""
    amount = 0.0
    if isinstance(value, int) and not isinstance(value, bool):
        amount = float(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().upper().replace(" ", ""))
        if match and match.group(2) in _UNITS:
            amount = float(match.group(1)) * _UNITS[match.group(2)]
    if not 1 <= amount <= _MAX:
        raise ValueError(f"{what} must be a positive number of bytes or a size such as '48MB' "
                         f"(K, M, G = 1024-based). Received: {value!r}")
    return int(amount)


def parse_rate(value: int | str, what: str = "a rate") -> int:
    """Bytes per second: what `parse_bytes` reads, optionally ending in "/s" ("500K", "2M/s", 100000)."""
    text = value.strip().upper() if isinstance(value, str) else value
    if isinstance(text, str) and text.endswith("/S"):
        text = text[:-2]
    try:
        return parse_bytes(text, what)
    except ValueError:
        raise ValueError(f"{what} must be bytes per second such as 500K or 2M/s. Received: {value!r}") from None
