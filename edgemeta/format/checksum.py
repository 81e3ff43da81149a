"""SHA-256 for the board: Python's built-in implementation, so the runtime does not load OpenSSL.

`hashlib.sha256` loads libcrypto (about 3.4 MB of resident memory on this machine, measured with
`ru_maxrss`), which a 512 MB board's adapter does not need for a few hashes per start.
"""

from __future__ import annotations

import os

try:  # CPython 3.12+ names the built-in module _sha2; 3.10 and 3.11 _sha256
    from _sha2 import sha256  # type: ignore[import-not-found]
except ImportError:
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,no-redef]
    except ImportError:  # a Python built without them
        from hashlib import sha256  # type: ignore[assignment]


def sha256_hex(data: bytes) -> str:
    return sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
