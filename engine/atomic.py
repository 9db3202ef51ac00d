"""Whole-or-nothing writes, for every file and folder the project writes (DESIGN.md §8 "writes happen as sets").

- A file is written to a temp name beside it (`.<name>.<random>.tmp`) and renamed over it: readers see the old
  version or the new one, never half of one. A folder is built as `.tmp-<what>-<random>` and renamed.
- Written files get ordinary permissions: a replaced file keeps its own mode, a new one gets 0666 less the umask.
  (mkstemp and safetensors create 0600 files, and the rename would keep that.)
- A write that fails for want of space removes its temp and raises DiskFull, which names the path and about how
  much to free. Temps a killed process left behind are found by `is_temporary` and removed by the next run.
"""
from __future__ import annotations

import errno
import math
import os
import secrets
import shutil
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

MB = 2**20
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how libraries word a full disk when they do not raise an OSError (safetensors: "os error 28")
_FULL_WORDS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


Size = int | Callable[[], int]  # bytes, or how to count them (only when a write failed)


class DiskFull(OSError):
    """No space left while writing `path`; the message says about how many MB to free (`needed` bytes in all)."""

    def __init__(self, path: str | os.PathLike, needed: Size, cause: BaseException | None = None):
        # a DiskFull for a part of the write (`cause`) becomes one for the whole, which needs at least as much
        needed = needed() if callable(needed) else needed
        self.path, self.needed = Path(path), int(max(needed, getattr(cause, "needed", 0)))
        # measured now: callers raise this after removing their partial temps, so `free` is what is really left
        short = self.needed * 1.1 + 64 * 1024 - free_bytes(self.path)
        self.free_mb = max(1, math.ceil(short / MB))
        super().__init__(errno.ENOSPC, f"no space left on device while writing {self.path}; "
                                       f"free {self.free_mb} MB", str(self.path))

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):
        return type(self), (self.path, self.needed)


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds path (or its nearest existing parent)."""
    for p in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return 0


def is_disk_full(exc: BaseException, path: Path | None = None) -> bool:
    """exc (or what caused it) is a full disk or quota. With `path`, a failed write on a disk with less than 1 MB
    left counts too: torch's zip writer reports a full disk only as "unexpected pos ..." / "file write failed"."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFull) or getattr(e, "errno", None) in _FULL_ERRNOS:
            return True
        if any(word in str(e).lower() for word in _FULL_WORDS):
            return True
        e = e.__cause__ or e.__context__
    return path is not None and isinstance(exc, (OSError, RuntimeError)) and free_bytes(path) < MB


@contextmanager
def disk_full_guard(path: str | os.PathLike, needed: Size, cleanup: Callable[[], None] = lambda: None) -> Iterator:
    """Run a write of about `needed` bytes to `path`; on any failure run `cleanup` (remove the partial write), and
    turn a full disk into DiskFull(path), measured after the cleanup."""
    try:
        yield
    except BaseException as e:
        full = isinstance(e, Exception) and is_disk_full(e, Path(path))
        cleanup()
        if full:
            raise DiskFull(path, needed, e) from e
        raise


# ----------------------------------------------------------------------------- permissions

_umask_lock = threading.Lock()


def umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask sets it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        old = os.umask(0o022)
        os.umask(old)
        return old


def new_file_mode() -> int:
    return 0o666 & ~umask()


def normal_modes(root: Path) -> None:
    """Ordinary permissions for a tree a library wrote (safetensors makes 0600 files, mkdtemp 0700 folders)."""
    files, dirs = new_file_mode(), 0o777 & ~umask()
    os.chmod(root, dirs)
    for folder, subdirs, names in os.walk(root):
        for d in subdirs:
            os.chmod(os.path.join(folder, d), dirs)
        for n in names:
            os.chmod(os.path.join(folder, n), files)


# ----------------------------------------------------------------------------- writers

def is_temporary(name: str) -> bool:
    """A temp of a write in progress (or of one a killed process left): `.tmp-*` folders, `.*.tmp` files."""
    return name.startswith(".tmp-") or (name.startswith(".") and name.endswith(".tmp"))


def remove_temporaries(root: Path, skip: tuple[str, ...] = ()) -> None:
    """Every temp under root, at any depth (folders named in skip are not entered)."""
    if not Path(root).is_dir():
        return
    for folder, subdirs, names in os.walk(root):
        for d in list(subdirs):
            if is_temporary(d):
                shutil.rmtree(os.path.join(folder, d), ignore_errors=True)
            if is_temporary(d) or d in skip:
                subdirs.remove(d)
        for n in names:
            if is_temporary(n):
                Path(folder, n).unlink(missing_ok=True)


def temp_dir(parent: Path, what: str) -> Path:
    """A new empty folder `.tmp-<what>-<random>` in parent, with ordinary permissions (mkdtemp's are 0700)."""
    with disk_full_guard(parent, 4096):
        Path(parent).mkdir(parents=True, exist_ok=True)
        while True:
            d = Path(parent) / f".tmp-{what}-{secrets.token_hex(4)}"
            try:
                d.mkdir()
                return d
            except FileExistsError:
                continue


def write_file(path: str | os.PathLike, write: Callable[[Path], None], size: int) -> Path:
    """`write(temp path)` writes about `size` bytes; the result replaces `path` whole, with ordinary permissions."""
    path = Path(path)
    with disk_full_guard(path, size):
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = new_file_mode()
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            break
        except FileExistsError:
            continue
    with disk_full_guard(path, size, cleanup=lambda: tmp.unlink(missing_ok=True)):
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_file(path, lambda tmp: tmp.write_bytes(data), len(data))


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    size = sum(t.numel() * t.element_size() for t in tensors.values())
    return write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), size)
