"""Writes that no reader sees half-done: whole JSON files, and directories renamed into place.

A server watching an export directory, a resumed run reading its workdir, or a second worker on
shared storage may look at any moment; they see the old state or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
from typing import Any, Iterator

STAGING_PREFIX = ".staging-"
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]+")


def write_json(path: str, content: Any, sort_keys: bool = False) -> None:
    """Writes JSON to a temporary file beside `path`, then renames it over `path`. A failed
    write leaves no temporary file behind, and its error names `path`."""
    temporary = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"
    try:
        with open(temporary, "w") as f:
            json.dump(content, f, indent=2, sort_keys=sort_keys)
            f.write("\n")
        os.replace(temporary, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise OSError(e.errno, e.strerror, path) from e


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """Gives an OSError raised inside the path it concerns: a failed write() names no file."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, path) from e


def write_bytes(path: str, content: bytes) -> None:
    """Writes a file whose errors name it."""
    with naming(path), open(path, "wb") as f:
        f.write(content)


def make_directory(path: str) -> None:
    """Creates `path` and its parents; a file in its place is an error naming it."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    os.makedirs(path, exist_ok=True)


def read_json(path: str, default: Any = None) -> Any:
    """The JSON content of `path`, or `default` if there is no such file."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def staging_name(host: str, pid: int, token: str) -> str:
    """A staging directory's name: `.staging-<host>-<pid>-<token>`. The host as well as the pid,
    so that writers on machines sharing a volume can tell their own from the others'."""
    return f"{STAGING_PREFIX}{host}-{pid}-{token}"


def _staging_writer(name: str) -> tuple[str, int] | None:
    """The (host, pid) a staging directory's name records, or None for any other name."""
    match = _STAGING_NAME.fullmatch(name)
    return (match["host"], int(match["pid"])) if match else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # Another user's process, still running.
    return True


def remove_abandoned_staging(parent: str) -> None:
    """Deletes staging directories in `parent` whose writer, a process of this host, is gone
    (killed mid-write). Another host's are left alone: whether its writer lives cannot be
    known from here, and on a shared volume it may be writing still."""
    host = socket.gethostname()
    for name in os.listdir(parent):
        writer = _staging_writer(name)
        if writer and writer[0] == host and not _alive(writer[1]):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


@contextlib.contextmanager
def staging_directory(parent: str) -> Iterator[str]:
    """A hidden directory in `parent` to write into and rename into place; removed on the way
    out if it was not renamed. Abandoned ones of this host's killed writers are swept first.

    It is made as os.makedirs makes directories, with the permissions the umask leaves (a
    server running as another user can read the result), under a name no other writer uses.
    """
    remove_abandoned_staging(parent)
    staging = os.path.join(parent, staging_name(socket.gethostname(), os.getpid(),
                                                secrets.token_hex(4)))
    os.mkdir(staging, 0o777)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
