"""Writing a file so that a reader never sees half of it: write a temporary file beside it, then rename.

One routine for every file fedkt writes while others may read it or a kill may interrupt it: the run
directory (fedkt.results), figures (fedkt.plots, fedkt.report), the data cache (fedkt.data) and the
clients' saved state.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomic(path: str | Path, data: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Write `data` (bytes, text as UTF-8, or a function that writes into the open binary file) to `path`
    through a temporary file in the same folder and os.replace: a kill mid-write leaves the previous file
    whole, and no temporary file stays behind when writing fails. The folder must exist. Returns path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
