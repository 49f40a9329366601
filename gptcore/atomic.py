"""Atomic file writes: write a temporary file beside the target, fsync it, rename it over the target.

A crash or a failed write at any point leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temporary path to write; on success it is fsynced and renamed to target."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # some writers (safetensors) create files private (0600)
        os.replace(tmp, target)
        fsync_directory(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(target, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def link_identical_files(originals, copies) -> None:
    """Replace every file under `copies` whose bytes equal a file of the same name under `originals` by a
    hard link to that file, atomically: one copy on disk, which stays whole when either name is removed
    or replaced (gptcore writes by renaming a new file over the old). Where no hard link can be made
    (another file system, a store that does not support them) the copy stays."""
    import filecmp

    by_name: dict[str, list[Path]] = {}
    for original in Path(originals).rglob("*"):
        if original.is_file() and not original.is_symlink():
            by_name.setdefault(original.name, []).append(original)
    for copy in [path for path in Path(copies).rglob("*") if path.is_file() and not path.is_symlink()]:
        same = [original for original in by_name.get(copy.name, []) if os.path.samefile(original, copy) or
                (original.stat().st_size == copy.stat().st_size and filecmp.cmp(original, copy, shallow=False))]
        if not same or os.path.samefile(same[0], copy):
            continue
        link = copy.with_name(f".{copy.name}.link-{os.getpid()}")
        try:
            os.link(same[0], link)
            os.replace(link, copy)
        except OSError:  # EXDEV, EPERM, ENOTSUP: the copy stays
            link.unlink(missing_ok=True)
