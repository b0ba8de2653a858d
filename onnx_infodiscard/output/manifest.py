"""The manifest written with every output folder: which files the tool wrote, with their sizes and hashes.

It is how a later run knows that replacing a folder loses nothing: a folder may be replaced only
when every entry in it is listed in its manifest, unchanged (`unknown_entries` is empty). Anything
else — a user's file, a file changed since, a folder without a manifest — makes the writers refuse.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .encode import SCHEMA_VERSION, json_text

MANIFEST = ".infodiscard-manifest.json"
#: Inside a folder while it is being written (removed before it is swapped into place): marks it as
#: this tool's scratch, which a later run may delete.
TMP_MARKER = ".infodiscard-tmp"
#: Scratch folder inside an output folder replaced file by file (the folder the user is standing in).
INNER_TMP_PREFIX = ".infodiscard-tmp-"
#: The lock inside an output folder whose parent cannot be written; a sibling's lock ends in LOCK_SUFFIX.
INNER_LOCK = ".infodiscard-lock"
LOCK_SUFFIX = ".infodiscard-lock"
FORMAT = "onnx-infodiscard output manifest"


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def write_manifest(folder: Path, kind: str) -> dict:
    """List every file and folder under `folder` (its scratch aside) in `folder/MANIFEST`; return the data."""
    files, folders = {}, []
    for root, dirs, names in os.walk(folder):
        base = Path(root).relative_to(folder)
        dirs.sort()
        folders += [(base / d).as_posix() for d in dirs]
        for name in sorted(names):
            if base == Path(".") and name in (MANIFEST, TMP_MARKER):
                continue
            path = Path(root) / name
            files[(base / name).as_posix()] = {"bytes": path.stat().st_size, "sha256": digest(path)}
    data = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "complete": True,
        "files": files,
        "folders": folders,
    }
    write_json_atomically(folder / MANIFEST, data)
    return data


def write_json_atomically(path: Path, data: dict) -> None:
    """Write to a sibling, then rename over `path`: a reader sees the old file or the new, never half of one."""
    scratch = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        scratch.write_text(json_text(data), encoding="utf-8")
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)


def read_manifest(folder: Path) -> dict | None:
    """The manifest of `folder`, or None when it is missing or not one of ours."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        return None
    files = data["files"]
    if not all(
        isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
        for v in files.values()
    ):
        return None
    if not isinstance(data.get("folders", []), list):
        return None
    return data


def is_scratch(path: Path) -> bool:
    """This tool's temporary folder (it holds TMP_MARKER), which a run holding the lock may delete."""
    return path.is_dir() and not path.is_symlink() and (path / TMP_MARKER).is_file()


def _own_top_level(folder: Path, name: str) -> bool:
    """Top-level entries of an output folder that are the tool's own bookkeeping, not its output."""
    if name == MANIFEST or name.startswith(MANIFEST + ".tmp-") or name == INNER_LOCK:
        return True
    if name.startswith(".") and name.endswith(LOCK_SUFFIX):
        return (folder / name).is_file() and not (folder / name).is_symlink()
    return name.startswith(INNER_TMP_PREFIX) and is_scratch(folder / name)


def _check_file(path: Path, entry: dict | None, verify: bool) -> str | None:
    """Why `path` is not a file the manifest lists as written (None when it is)."""
    if entry is None or path.is_symlink() or not path.is_file():
        return ""
    try:
        if path.stat().st_size != entry["bytes"] or (verify and digest(path) != entry["sha256"]):
            return " (changed since it was written)"
    except OSError:
        return " (unreadable)"
    return None


def unknown_entries(folder: Path, limit: int = 4) -> list[str]:
    """Up to `limit` entries under `folder` that its manifest does not list as written by this tool.

    Empty for an empty folder and for an unchanged output. Files are compared by size and SHA-256
    (by name only while a replacement in place is under way, `complete` false).
    """
    manifest = read_manifest(folder) or {"files": {}, "folders": []}
    known, known_folders = manifest["files"], set(manifest.get("folders", []))
    verify = manifest.get("complete", True) is not False
    found: list[str] = []

    def unreadable(err: OSError) -> None:
        name = Path(os.path.relpath(err.filename, folder)).as_posix() if err.filename else "?"
        found.append(f"{name} (unreadable)")

    for root, dirs, names in os.walk(folder, onerror=unreadable):
        base = Path(root).relative_to(folder)
        if base == Path("."):
            dirs[:] = [d for d in dirs if not _own_top_level(folder, d)]
            names = [n for n in names if not _own_top_level(folder, n)]
        dirs.sort()
        for d in list(dirs):
            rel = (base / d).as_posix()
            listed = rel in known_folders or any(k.startswith(rel + "/") for k in known)
            if (Path(root) / d).is_symlink() or not listed:
                found.append(rel + "/")
                dirs.remove(d)
        for name in sorted(names):
            rel = (base / name).as_posix()
            why = _check_file(Path(root) / name, known.get(rel), verify)
            if why is not None:
                found.append(rel + why)
        if len(found) >= limit:
            break
    return found[:limit]
