"""Atomic writes: write next to the target, fsync, then rename, so readers never see a partial file or folder.

Temporaries are named ``.<target name>.hermes-tmp-<host>-<pid>.<random><suffix>`` (``<host>``: 8 hex digits of the
host name's sha256). A process killed with SIGKILL cannot remove its temporary, so the next atomic write of the same
target removes those temporaries of that target that carry this host's mark and a writer pid that is no longer alive.
Nothing else is ever removed: not another target's temporaries, not a live writer's, not another host's (a shared
network folder), not files without the mark (including those of hermesseg versions before the mark). On Windows
liveness is not checked and nothing is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputError

MARK = "hermes-tmp"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_prefix(target: Path, kind: str = MARK) -> str:
    """The name prefix of this process's temporaries for ``target``."""
    return f".{target.name}.{kind}-{_HOST}-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate the process on Windows: never guess there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove temporaries of ``target`` left by dead writers on this host (see the module docstring); returns them."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.{MARK}(?:-old)?-{_HOST}-(\d+)\.")
    removed = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or int(match[1]) == os.getpid() or _pid_alive(int(match[1])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def refuse_folder(target: Path) -> None:
    """OutputError when ``target``, a file about to be written, is a folder (say so before any work is done)."""
    if Path(target).is_dir():
        raise OutputError(f"{target} is a folder; give the name of the file to write")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``target``, on error it is removed.

    ``suffix`` keeps the extension writers look at (SimpleITK picks its format from it).
    """
    target = Path(target)
    refuse_folder(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(target), suffix=suffix or "".join(target.suffixes[-2:]),
                                   dir=target.parent)
    except OSError as e:
        raise _write_error(target, e) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        refuse_folder(target)
        os.replace(tmp_path, target)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise _write_error(target, e) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _write_error(target: Path, error: OSError) -> OutputError:
    """The failure named by the file the user asked for, not by our temporary (full disk, permissions...)."""
    return OutputError(f"cannot write {target}: {error.strerror or error}")


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling folder that replaces ``target`` on success and disappears on error."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(target), dir=target.parent))
    except OSError as e:
        raise _write_error(target, e) from None
    try:
        yield tmp
        if target.exists():
            old = target.with_name(temporary_prefix(target, f"{MARK}-old") + secrets.token_hex(4))
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(target, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_file(output: str | os.PathLike, *inputs: str | os.PathLike) -> Path:
    """Refuse an output file that is a folder or the same file as one of ``inputs`` (writing it would replace an
    input: the parent model is never modified). Returns the output as a Path."""
    output = Path(output)
    refuse_folder(output)
    for source in inputs:
        source = Path(source)
        same = output.resolve() == source.resolve() or (output.exists() and source.exists()
                                                        and os.path.samefile(output, source))
        if same:
            raise OutputError(f"-o {output} is the input {source}; write the result to a new file")
    return output
