"""A content-addressed store of solved rows, so that a re-run, a resumed run or a comparison with
one more model computes only what is missing.

A row's key is the sha256 of everything that decides its answer: the model's sha256, the
canonical image's content, the layer, the preprocessing, every solver setting that changes
numbers, the device type and the tool version. Entries are `.npz` files (numbers only, read with
`allow_pickle=False`), written to a temporary name and renamed, so an interrupted write never
leaves a half entry under a real key. Default folder `~/.cache/onnx-infodiscard/rows/`, or
`$INFODISCARD_CACHE/rows/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .errors import InputError
from .perturb import image_hash
from .rows import Row, SolvedRow
from .session import Session

CACHE_ENV = "INFODISCARD_CACHE"
#: Settings that change speed or memory but never a row's numbers (row-local noise).
PERFORMANCE_ONLY = ("max_batch", "max_memory")


def default_root() -> Path:
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "onnx-infodiscard") / "rows"


class RowCache:
    """Solved rows on disk under `root`, keyed by `key(session, row, settings)`."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.warnings: list[str] = []
        try:  # up front, so a bad cache folder fails before any work, not after it
            self.root.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.root).close()
        except OSError as err:
            raise InputError(
                f"the row cache {self.root} is not a writable folder ({err.strerror}); point "
                f"{CACHE_ENV} at one, or run without the cache",
                option="cache",
            ) from None

    def key(self, session: Session, row: Row, settings, version: str) -> str:
        solver = {k: v for k, v in asdict(settings).items() if k not in PERFORMANCE_ONLY}
        preprocessing = {k: v for k, v in session.preprocessing.to_json().items() if k != "source"}
        identity = {
            "model": session.loaded.sha256,
            "image": image_hash(session.images[row.image].pixels),
            "layer": row.layer,
            "preprocessing": preprocessing,
            "settings": solver,
            "device": session.device.type,
            "version": version,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> SolvedRow | None:
        """The stored row, or None; a corrupt or truncated entry is removed with a warning."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                scalars = json.loads(str(data["scalars"]))
                return SolvedRow(log_sigma=np.array(data["log_sigma"], dtype=np.float32), **scalars)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as err:
            message = f"cache entry {path.name} is unreadable ({type(err).__name__}); recomputing it"
            self.warnings.append(message)
            warnings.warn(message, stacklevel=2)
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, solved: SolvedRow) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, log_sigma=solved.log_sigma, scalars=np.array(json.dumps(solved.scalars())))
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
