"""Atomic file writes: readers never see a half-written file, and a crash leaves none behind."""
import os
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["atomic_write"]

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, data: Union[bytes, str, Callable[[BinaryIO], None]]) -> None:
    """Write ``path`` through a temporary file in the same folder, fsync and a rename.

    Every file brainseg writes (checkpoints, results, masks, figures, reports) goes through
    this function, so an interrupted run leaves either the old file or the new one.

    Args:
        path: destination file; its folder is created if needed.
        data: bytes; text (written as UTF-8); or a function that writes into the open binary
            file (e.g. ``lambda f: torch.save(state, f)``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
