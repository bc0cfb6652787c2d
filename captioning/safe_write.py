"""Replacing a user's file without risk: new bytes go to a temporary file in the
same folder, are flushed to disk, get the original's permissions, owner,
extended attributes and timestamps, and are renamed over it only if the
original is still what was read. A kill at any moment leaves the old file or
the new one, never a mix; a temporary file left by a killed run is hidden (a dot
name no image search picks up) and removed by the next run. Standard library only.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import sys

from .errors import Exit, Failure

TEMP_RE = re.compile(r"^\..+\.(\d+)\.caption-tmp-[0-9a-f]{8}$")
_IGNORED_XATTR_ERRORS = (errno.EPERM, errno.ENOTSUP, errno.ENODATA, errno.EINVAL)


def temp_path(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{os.getpid()}.caption-tmp-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder: str) -> list[str]:
    """Delete the temporary files of writers that are gone (killed mid-write); returns them."""
    removed = []
    try:
        entries = list(os.scandir(folder or "."))
    except OSError:
        return removed
    for entry in entries:
        m = TEMP_RE.match(entry.name)
        if m and not _alive(int(m.group(1))) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(entry.path)
            except OSError:
                pass
    return removed


def _why(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "the disk is full (or the file size limit reached)"
    return e.strerror or str(e)


def check_target(path: str, label: str, must_exist: bool) -> os.stat_result | None:
    """The file about to be replaced (its stat, to notice later changes), or None for a
    new file; Failure(IMAGE) for anything we must not or cannot replace."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if must_exist:
            raise Failure(Exit.IMAGE, f"{label}: no such file") from None
        st = None
    except OSError as e:
        raise Failure(Exit.IMAGE, f"{label}: cannot read ({_why(e)})") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise Failure(Exit.IMAGE, f"{label}: is a symbolic link (to {os.readlink(path)}); not written, "
                                      "name the file it points to")
        if not stat.S_ISREG(st.st_mode):
            raise Failure(Exit.IMAGE, f"{label}: not a regular file; not written")
        if st.st_nlink > 1:
            raise Failure(Exit.IMAGE, f"{label}: has {st.st_nlink} hard links, which a rewrite would split; "
                                      "not written")
        # The write bits, not only access(): root may write anything, but a file the user
        # made read-only is one they do not want changed.
        if not os.access(path, os.W_OK) or not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            raise Failure(Exit.IMAGE, f"{label}: read-only file; not written")
    folder = os.path.dirname(path) or "."
    if not os.access(folder, os.W_OK | os.X_OK):
        raise Failure(Exit.IMAGE, f"{label}: its folder is not writable (the file is replaced by a new one); "
                                  "not written")
    return st


def read_unchanged(path: str, label: str, before: os.stat_result | None) -> bytes:
    """The file's bytes, if it is still the file `before` describes (b"" for a new file)."""
    if before is None:
        if os.path.lexists(path):
            raise Failure(Exit.IMAGE, f"{label}: appeared while it was being captioned; left as it was")
        return b""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise Failure(Exit.IMAGE, f"{label}: cannot read ({_why(e)})") from None
    with os.fdopen(fd, "rb") as f:
        if _changed(before, os.fstat(f.fileno())):
            raise Failure(Exit.IMAGE, f"{label}: changed by something else while it was being captioned; "
                                      "left as it was")
        return f.read()


def _changed(before: os.stat_result, now: os.stat_result) -> bool:
    return (now.st_ino, now.st_dev, now.st_size, now.st_mtime_ns) != (
        before.st_ino, before.st_dev, before.st_size, before.st_mtime_ns)


def replace(path: str, data: bytes, label: str, before: os.stat_result | None, touch: bool = False) -> None:
    """Write `data` as `path` atomically (see the module docstring). `before` is the
    original's stat from `check_target` (None: a new file); its mtime is kept unless `touch`."""
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o600 if before else 0o666)
    except OSError as e:
        raise Failure(Exit.IMAGE, f"{label}: cannot write beside it ({_why(e)}); not written") from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            if before is not None:
                _copy_identity(path, tmp, fd, before, label)
                if not touch:
                    os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
        finally:
            os.close(fd)
        if before is not None:
            try:
                now = os.lstat(path)
            except FileNotFoundError:
                now = None
            if now is None or _changed(before, now):
                raise Failure(Exit.IMAGE, f"{label}: changed by something else while it was being written; "
                                          "left as it was")
        elif os.path.lexists(path):
            raise Failure(Exit.IMAGE, f"{label}: appeared while it was being written; left as it was")
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise Failure(Exit.IMAGE, f"{label}: cannot write ({_why(e)}); left as it was") from None
        raise
    _sync_folder(os.path.dirname(path) or ".")


def _copy_identity(src: str, dst: str, fd: int, st: os.stat_result, label: str) -> None:
    """Owner, permissions and extended attributes of `src` onto the new file."""
    if (st.st_uid, st.st_gid) != (os.fstat(fd).st_uid, os.fstat(fd).st_gid):
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except PermissionError:
            raise Failure(Exit.IMAGE, f"{label}: belongs to another user, whose ownership a rewrite would "
                                      "take away; not written") from None
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    if hasattr(os, "listxattr"):  # Linux
        for name in os.listxattr(src, follow_symlinks=False):
            try:
                os.setxattr(fd, name, os.getxattr(src, name, follow_symlinks=False))
            except OSError as e:
                if e.errno not in _IGNORED_XATTR_ERRORS or name.startswith("user."):
                    raise
    elif sys.platform == "darwin":
        _copy_xattrs_macos(src, dst)


def _copy_xattrs_macos(src: str, dst: str) -> None:
    """Finder tags, comments and the quarantine flag live in extended attributes, which
    Python's os module cannot reach on macOS: copy them with copyfile(3)."""
    import ctypes

    libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
    COPYFILE_XATTR = 1 << 2
    if libc.copyfile(os.fsencode(src), os.fsencode(dst), None, COPYFILE_XATTR) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"copying extended attributes: {os.strerror(err)}")


def _sync_folder(folder: str) -> None:
    """Make the rename itself durable (where folders can be opened for fsync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
