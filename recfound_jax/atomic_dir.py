"""Build a directory atomically: into a temporary sibling, then one rename, so a crash never leaves half of it."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_dir_atomically(out: str | os.PathLike, build: Callable[[Path], None], *, marker: str) -> Path:
    """Run ``build(tmp)`` in a temporary folder beside ``out`` and rename it to ``out``.

    ``build`` must write ``marker`` last. A non-empty ``out`` without the marker is refused; when
    another process finished the same folder first, its copy is kept.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / marker).is_file():
        raise FileExistsError(f"{out} exists without {marker} and is not empty: not overwriting it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; these are ordinary shared folders
    try:
        build(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except OSError:
        if not (out / marker).is_file():
            raise
        # another process finished first: keep its copy
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
