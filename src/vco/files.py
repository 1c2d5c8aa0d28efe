"""Crash-safe file writes: a temporary file in the same folder, fsynced, then renamed over the target.

A reader sees either the old file or the complete new one, never a half-written one; a process killed
mid-write leaves only a ``.<name>.<random>.tmp`` file behind (see ``remove_stale_temporaries``).
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Callable


class WriteError(RuntimeError):
    """A file that could not be written; the previous version (if any) is intact."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # not every filesystem supports fsync on a directory


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (os.umask sets it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The permissions the file gets: those of the file it replaces, else those of a file made by
    open() (0o666 less the umask), not the private 0o600 of the temporary file, so that run
    folders stay readable to whoever could read them before (a shared cluster folder)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *,
                 passthrough: tuple[type[Exception], ...] = ()) -> None:
    """``write(tmp_path)`` fills a temporary file next to ``path``; it is then fsynced and renamed
    onto ``path`` (the old file stays until that rename). On failure the temporary file is removed
    and WriteError names ``path`` and the OS reason (e.g. "No space left on device").

    ``passthrough``: for writers that compute while they write (e.g. run an encoder), exceptions
    of these types keep their own type (after the clean-up) instead of becoming a WriteError;
    an OSError always becomes a WriteError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(f"could not write {path}: {e.strerror or e}. The previous file (if any) "
                         f"is intact.") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _mode_for(path))    # after write(): a library may have renamed its own file onto tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as e:  # OSError, or the writer's own error wrapping one (e.g. disk full)
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, passthrough) and not isinstance(e, OSError):
            raise
        reason = getattr(e, "strerror", None) or e
        raise WriteError(f"could not write {path}: {reason}. The previous file (if any) is "
                         f"intact.") from None
    except BaseException:  # KeyboardInterrupt and the like: clean up, do not disguise
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """``path.write_text(text)``, atomically (see atomic_write)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


# safetensors' save_file writes its own temporary first (Rust's tempfile: ".tmp" + 6 letters or
# digits) inside ours; a kill mid-save leaves both.
_LIBRARY_TEMPORARY = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete the temporary files of writes that were killed midway (the real files were never
    touched): ours (``.<name>.<random>.tmp``) and safetensors' (``.tmp`` + 6 random characters);
    call it only when no other process is writing into ``folder``."""
    for tmp in Path(folder).iterdir():
        if tmp.is_file() and ((tmp.name.startswith(".") and tmp.name.endswith(".tmp"))
                              or _LIBRARY_TEMPORARY.fullmatch(tmp.name)):
            tmp.unlink(missing_ok=True)
