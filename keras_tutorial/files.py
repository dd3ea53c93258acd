"""Writes that no reader sees half-done: whole JSON files, and directories renamed into place.

A server watching an export directory, a resumed run reading its workdir, or a second worker on
shared storage may look at any moment; they see the old state or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

STAGING_PREFIX = ".staging-"


def write_json(path: str, content: Any) -> None:
    """Writes JSON to a temporary file beside `path`, then renames it over `path`."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        json.dump(content, f, indent=2)
        f.write("\n")
    os.replace(temporary, path)


def read_json(path: str, default: Any = None) -> Any:
    """The JSON content of `path`, or `default` if there is no such file."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def remove_abandoned_staging(parent: str) -> None:
    """Deletes staging directories in `parent` whose writing process is gone (killed mid-write)."""
    for name in os.listdir(parent):
        pid = name[len(STAGING_PREFIX):].split("-")[0]
        if not (name.startswith(STAGING_PREFIX) and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except PermissionError:
            pass  # Another user's process, still running.


def _directory_mode() -> int:
    """0o777 less the umask: what os.makedirs gives, where mkdtemp gives the owner alone 0o700
    (a server running as another user could not read the result)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


@contextlib.contextmanager
def staging_directory(parent: str) -> Iterator[str]:
    """A hidden directory in `parent` to write into and rename into place; removed on the way
    out if it was not renamed. Abandoned ones of killed writers are swept first."""
    remove_abandoned_staging(parent)
    staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=parent)
    try:
        os.chmod(staging, _directory_mode())
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
