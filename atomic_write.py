"""
Write a file or a folder so that a reader, or a run restarted after kill -9, sees the old one or the whole
new one, never half of it: write to a temporary name beside it, flush to disk, then rename into place
(a rename within a folder is atomic on POSIX and Windows). A file also survives a power cut: the folder that
holds its rename is flushed too.

    with atomic_write("edu_fineweb10B/val_000000.bin") as tmp:   # a file: tmp is "<path>.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
    with atomic_write("hf_model", folder=True) as tmp:            # a folder: tmp is a new empty folder
        model.save_pretrained(tmp)

Used for token shards (shards.py) and fineweb.py's progress file, checkpoints (checkpoint.py), the HellaSwag
download (hellaswag.py), the W&B run id (run_log.py), the plot (plot_log.py) and Hugging Face exports (export_hf.py).
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def current_umask() -> int:
    """The process's umask: the permission bits new files don't get (reading it means setting it)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def fsync_folder(path: str) -> None:
    """Flush a folder's entries (a rename, a new file) to disk: fsync of a file doesn't, and after a power cut
    the rename could be undone. Best effort, as databases do it: Windows can't open a folder (NTFS journals the
    rename itself), and some file systems or permissions refuse; the file itself is already written and in place."""
    if os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


@contextmanager
def atomic_write(path: str, tmp: str | None = None, folder: bool = False) -> Iterator[str]:
    """Yield a temporary path beside `path` to write; if the block ends without an exception, it becomes
    `path`. If the block raises, the temporary file or folder is removed and `path` is left as it was.

    A file's temporary name is tmp, by default path + ".tmp" (a fixed name, so that a later run can find
    and remove what a killed one left). A folder's is new each time (path.tmp.XXXX), so that no folder of
    anyone else's can be in the way or be removed; an existing folder at `path` is replaced, and put back
    if the swap fails half-way.
    """
    path = path.rstrip("/\\") if folder else path
    if folder:
        tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp.", dir=os.path.dirname(os.path.abspath(path)))
    else:
        tmp = tmp or path + ".tmp"
    old = None
    try:
        yield tmp
        if folder:
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's folder is private (0700); the result isn't
            if os.path.exists(path):
                old = tmp + ".old"
                os.rename(path, old)  # a folder can't be renamed over a non-empty one: move it aside first
            os.rename(tmp, path)
            if old:
                shutil.rmtree(old)
        else:
            fd = os.open(tmp, os.O_RDWR)  # (Windows flushes only a file open for writing)
            try:
                os.fsync(fd)  # the bytes are on disk before the rename makes them visible
            finally:
                os.close(fd)
            os.replace(tmp, path)
            fsync_folder(os.path.dirname(os.path.abspath(path)))  # and the rename is, before anything counts on it
    finally:
        if folder and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            if old and os.path.exists(old) and not os.path.exists(path):
                os.rename(old, path)  # the swap failed half-way: put the earlier folder back
        elif not folder and os.path.exists(tmp):
            os.remove(tmp)
