"""Files only this user may read: the embedded database and the admin key.

Directories are made 0700 and files 0600 at creation (not after, when another user could have
opened them meanwhile); a file found with wider permissions is narrowed.
"""

from __future__ import annotations

import os
import stat


def private_dir(path: str) -> None:
    """Make `path` (and missing parents) owner-only; narrow it if it exists wider."""
    if not path:
        return
    os.makedirs(path, mode=0o700, exist_ok=True)
    _narrow(path, 0o700)


def private_file(path: str) -> bool:
    """Create `path` empty with mode 0600 unless it exists (then narrow it to 0600); True
    when this call created it."""
    private_dir(os.path.dirname(path))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _narrow(path, 0o600)
        return False
    os.close(fd)
    return True


def _narrow(path: str, mode: int) -> None:
    st = os.stat(path)
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & ~mode:
        os.chmod(path, mode)
