"""How operators put a regenerated input file in place while keeping its size and mtime."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def rewrite_keeping_size_and_mtime(path: Path, how: str = "cp -p") -> None:
    """New content of the same size put in place as ``cp -p`` (same inode, content rewritten, mtime
    restored) or ``rsync -a`` (a temp file renamed over it, mtime copied) would."""
    before = os.stat(path)
    data = path.read_bytes()
    regenerated = path.with_name(".regenerated-" + path.name)
    regenerated.write_bytes(data.translate(bytes.maketrans(b"0123456789", b"1234567890")))
    assert regenerated.read_bytes() != data, "nothing to change in this file"
    os.utime(regenerated, ns=(before.st_atime_ns, before.st_mtime_ns))
    if how == "cp -p":
        shutil.copy2(regenerated, path)
        regenerated.unlink()
    elif how == "rsync -a":
        os.replace(regenerated, path)
    else:
        raise ValueError(f"how: 'cp -p' or 'rsync -a', not {how!r}")
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
