"""Files that decide what kit loads into the kernel must not be changeable by other users.

kit compiles what the catalog and its templates say, usually as root: whoever
can write those files chooses the program. Like sshd's StrictModes, kit refuses
such a file when it, or the directory holding it, belongs to another user or is
writable by group or others (a sticky directory such as /tmp is fine: others
cannot replace a file they do not own there).
"""

import os
import stat

from kit.errors import CatalogError


def check(path, what):
    for p in (path, os.path.dirname(os.path.abspath(path))):
        try:
            st = os.stat(p)
        except OSError:
            return  # the caller reports a missing file in its own words
        owner_ok = st.st_uid in (0, os.geteuid())
        shared = st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX)
        if not owner_ok or shared:
            raise CatalogError(
                f"{what} {p} can be changed by other users (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}),"
                " so they would choose what kit loads into the kernel",
                f"make it yours or root's and not writable by others: chmod go-w {p}")
