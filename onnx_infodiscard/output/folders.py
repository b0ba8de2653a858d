"""Output folders that cannot hurt: written atomically, replaced only when everything in them is ours.

`write_folder` builds an output in a hidden sibling (`.NAME.tmp-*`, marked as scratch), writes its
manifest, and renames it into place; the folder it replaces must hold nothing but an earlier
output of this tool (`manifest.unknown_entries`). The folder the user is standing in (the current
directory, or one above it) is never swapped away: it is updated file by file. One run at a time
writes a given folder (a lock beside it, held while writing); a run that fails or is interrupted
removes its scratch and the parent folders it created, and later runs remove scratch left by a
killed one. `check_output_folder` runs the same checks up front, before any work.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError
from .manifest import (
    INNER_LOCK,
    INNER_TMP_PREFIX,
    LOCK_SUFFIX,
    MANIFEST,
    TMP_MARKER,
    is_scratch,
    read_manifest,
    unknown_entries,
    write_json_atomically,
    write_manifest,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs into one folder are not serialised there
    fcntl = None

#: How long a run waits for another run writing the same folder before it gives up (seconds).
LOCK_TIMEOUT = 120.0
SCRATCH_NOTE = "a folder being written by onnx-infodiscard; safe to delete when no run is writing\n"


def check_output_folder(
    out: Path | str, inputs: Sequence[Path | str | None] = (), *, new_subfolder: bool = False
) -> Path:
    """Up front, before any work: `out` may be written, and writing it can lose nothing. Returns it absolute.

    Refused (InputError, option "out"): the file system root, an existing file, a dangling link, a
    folder equal to or holding one of `inputs` (model, images, boxes, cache), a folder holding
    anything this tool did not write (unless `new_subfolder`: the output then goes into a new
    subfolder of it), a location that cannot be written. Creates nothing.
    """
    if isinstance(inputs, (str, Path)):
        raise TypeError("inputs is a sequence of paths, not one path")
    out = _absolute(out)
    _refuse_inputs(out, inputs)
    if out.is_dir():
        if not new_subfolder:
            refuse_unknown(out)
        if new_subfolder or _in_place(out):
            _require_writable(out, out)
        elif not os.access(out.parent, os.W_OK | os.X_OK):
            _require_writable(out, out)  # replaced file by file when its parent cannot take a sibling
        return out
    existing = out.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(
            f"cannot create the output folder {out}: {existing} is a file, not a folder; choose another output folder",
            option="out",
        )
    _require_writable(out, existing)
    return out


def write_folder(
    out: Path | str,
    write: Callable[[Path], None],
    marker: str,
    *,
    new_subfolder: bool = False,
    lock_timeout: float = LOCK_TIMEOUT,
) -> Path:
    """Fill a new folder with `write(folder)`, add its manifest, and put it in place as `out`; return the path.

    `marker` is the output's main file (report.json, ...): the last to appear, so a folder without
    it never looks complete. Any failure or interrupt leaves an existing output as it was (a
    replacement in place, used for the current directory, can leave it partly updated but never
    looking complete), removes the scratch folder and the parent folders this call created.
    """
    out = check_output_folder(out, new_subfolder=new_subfolder)
    created: list[Path] = []
    try:
        _make_parents(out.parent, created)
        if new_subfolder and out.is_dir() and any(out.iterdir()):
            out = _new_subfolder(out, Path(marker).stem, created)
        with _locked(out, lock_timeout):
            if out.is_dir() and (_in_place(out) or not os.access(out.parent, os.W_OK | os.X_OK)):
                _replace_in_place(out, write, marker)
            else:
                _build_and_swap(out, write, marker)
    except BaseException:
        for folder in reversed(created):
            try:
                folder.rmdir()  # only when still empty
            except OSError:
                pass
        raise
    return out


def refuse_unknown(out: Path) -> None:
    """Raise InputError naming a few entries of `out` that this tool did not write (nothing when none)."""
    unknown = unknown_entries(out, limit=4)
    if not unknown:
        return
    names = ", ".join(unknown[:3]) + (" and more" if len(unknown) > 3 else "")
    earlier = read_manifest(out) is None and any(
        (out / m).is_file() for m in ("report.json", "comparison.json", "localization.json")
    )
    hint = " (an earlier output without a manifest: delete it yourself if it can go)" if earlier else ""
    raise InputError(
        f"{out} holds files this tool did not write ({names}){hint}; nothing was replaced: choose "
        "another output folder, or ask for a new subfolder inside it",
        option="out",
    )


# --------------------------------------------------------------------------------------------- checks


def _absolute(out: Path | str) -> Path:
    out = Path(os.path.abspath(Path(out).expanduser()))
    if out.is_symlink():
        if not out.exists():
            raise InputError(
                f"{out} is a link to {os.readlink(out)}, which does not exist; give a folder path (or remove the link)",
                option="out",
            )
        if out.is_dir():
            out = out.resolve()
    if out.parent == out:
        raise InputError(f"{out}: give a folder for the output, not the file system root", option="out")
    if out.exists() and not out.is_dir():
        raise InputError(
            f"{out} is an existing file; give a folder path for the output (or remove the file)", option="out"
        )
    return out


def _refuse_inputs(out: Path, inputs: Sequence[Path | str | None]) -> None:
    real_out = Path(os.path.realpath(out))
    for given in inputs:
        if given is None:
            continue
        real = Path(os.path.realpath(Path(given).expanduser()))
        if real == real_out:
            raise InputError(f"{out} is also an input ({given}); write the output to a folder of its own", option="out")
        if real_out in real.parents:
            raise InputError(
                f"{out} holds the input {given}; write the output to a folder of its own, outside the inputs",
                option="out",
            )


def _require_writable(out: Path, folder: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write the output folder {out}: {folder} is not writable; choose another output "
            "folder or fix its permissions",
            option="out",
        )


def _in_place(out: Path) -> bool:
    """`out` is the current directory or holds it: swapping it away would pull the floor from under the user."""
    try:
        cwd = Path(os.path.realpath(os.getcwd()))
    except OSError:
        return False
    real = Path(os.path.realpath(out))
    return cwd == real or real in cwd.parents


# --------------------------------------------------------------------------------------------- writing


def _mkdir(folder: Path, created: list[Path]) -> bool:
    """Make `folder`; True (and recorded for clean-up) when this call made it, False when it existed."""
    try:
        folder.mkdir()
    except FileExistsError:
        return False
    except OSError as err:
        raise InputError(
            f"cannot create the output folder {folder} ({err.strerror or err}); choose another output folder",
            option="out",
        ) from None
    created.append(folder)
    return True


def _make_parents(parent: Path, created: list[Path]) -> None:
    """Create the missing folders above the output, recording each one this call made (for clean-up)."""
    missing = []
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        _mkdir(folder, created)


def _new_subfolder(out: Path, stem: str, created: list[Path]) -> Path:
    """A fresh `out/{stem}-{n}` (the first free n), made here so that two runs never pick the same one."""
    for n in range(1, 100_000):
        if _mkdir(out / f"{stem}-{n}", created):
            return out / f"{stem}-{n}"
    raise InputError(f"{out} has no free {stem}-N subfolder name left; choose another output folder", option="out")


def _scratch(parent: Path, prefix: str, out: Path) -> Path:
    try:
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    except OSError as err:
        raise InputError(
            f"cannot write the output folder {out}: {parent} is not writable "
            f"({err.strerror or err}); choose another output folder or fix its permissions",
            option="out",
        ) from None
    os.chmod(tmp, 0o755)
    (tmp / TMP_MARKER).write_text(SCRATCH_NOTE, encoding="utf-8")
    return tmp


def _remove_stale(out: Path) -> None:
    """Delete scratch left beside (or inside) `out` by killed runs: only folders that are provably ours."""
    pattern = glob.escape(f".{out.name}.")
    siblings = [*out.parent.glob(pattern + "tmp-*"), *out.parent.glob(pattern + "old-*")]
    for folder in siblings:
        if folder.is_dir() and not folder.is_symlink() and (is_scratch(folder) or not unknown_entries(folder, 1)):
            shutil.rmtree(folder, ignore_errors=True)
    if out.is_dir():
        for folder in out.glob(glob.escape(INNER_TMP_PREFIX) + "*"):
            if is_scratch(folder):
                shutil.rmtree(folder, ignore_errors=True)


def _build_and_swap(out: Path, write: Callable[[Path], None], marker: str) -> None:
    _remove_stale(out)
    if out.is_dir():
        refuse_unknown(out)  # again, under the lock: another run or the user may have changed it since
    tmp = _scratch(out.parent, f".{out.name}.tmp-", out)
    try:
        write(tmp)
        write_manifest(tmp, marker)
        (tmp / TMP_MARKER).unlink()
        swap_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an old output is moved aside first, then deleted."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _replace_in_place(out: Path, write: Callable[[Path], None], marker: str) -> None:
    """Update `out` file by file (it stays the same folder): the marker goes first and comes back last."""
    _remove_stale(out)
    refuse_unknown(out)
    tmp = _scratch(out, INNER_TMP_PREFIX, out)
    try:
        write(tmp)
        new = write_manifest(tmp, marker)
        old = read_manifest(out) or {"files": {}, "folders": []}
        # While files move, every name of both outputs is known (by name only): a killed run leaves a
        # folder that the next run may still replace, and no marker, so it never looks complete.
        write_json_atomically(
            out / MANIFEST,
            {
                **new,
                "complete": False,
                "files": {**old["files"], **new["files"]},
                "folders": sorted({*old.get("folders", []), *new["folders"]}),
            },
        )
        (out / marker).unlink(missing_ok=True)
        for rel in new["folders"]:
            (out / rel).mkdir(parents=True, exist_ok=True)
        for rel in new["files"]:
            if rel != marker:
                os.replace(tmp / rel, out / rel)
        for rel in set(old["files"]) - set(new["files"]):
            (out / rel).unlink(missing_ok=True)
        _remove_empty_folders(out, set(old.get("folders", [])) - set(new["folders"]))
        os.replace(tmp / marker, out / marker)
        os.replace(tmp / MANIFEST, out / MANIFEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_empty_folders(out: Path, folders: set[str]) -> None:
    for rel in sorted(folders, key=lambda r: r.count("/"), reverse=True):
        folder = out / rel
        if not _in_place(folder):
            try:
                folder.rmdir()
            except OSError:
                pass


# --------------------------------------------------------------------------------------------- locking


def _lock_path(out: Path) -> Path:
    if os.access(out.parent, os.W_OK | os.X_OK):
        return out.parent / f".{out.name}{LOCK_SUFFIX}"
    return out / INNER_LOCK


@contextmanager
def _locked(out: Path, timeout: float) -> Iterator[None]:
    """Hold the lock of `out` (an advisory lock on a file beside it) while the body runs; then remove it.

    Another run holding it is waited for up to `timeout` seconds, then refused. The lock dies with
    its process, so a killed run never blocks later ones; the file is removed by its holder, and a
    waiter that finds its file removed or replaced tries again.
    """
    if fcntl is None:
        yield
        return
    path = _lock_path(out)
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            if time.monotonic() > deadline:
                raise InputError(
                    f"another run{holder} is writing {out}; wait for it to finish, or choose another output folder",
                    option="out",
                ) from None
            time.sleep(0.05)
            continue
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)  # its holder removed the file as we waited: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        try:
            os.unlink(path)  # still holding it, so that a waiter on this file sees it gone
        except OSError:
            pass
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (process {text})" if text.isdigit() else ""
