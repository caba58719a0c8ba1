"""Files of the commands: checked inputs, and results written all at once or not at all.

Every command checks its input files and its output directory before it computes
anything, so a typo costs seconds, not a whole run.  Results are written into a
hidden staging folder next to (or inside) the output directory and moved into
place only when every file is complete: a failure or Ctrl-C part way leaves the
output directory as it was, and each result file is replaced by ``os.replace``
(atomic on POSIX), never seen half-written.  Existing results are kept unless
``--overwrite`` is given.  Only a process killed outright (SIGKILL, power loss)
can leave a hidden ``.favorkern-partial-*`` folder behind, safe to delete.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np


class UsageError(Exception):
    """A problem with the command's arguments or paths (exit status 2)."""


# -- inputs ---------------------------------------------------------------------------


def check_input_file(path, option: str) -> str:
    """``path`` if it names a readable regular file, else a :class:`UsageError`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"{option}: data file not found: {path}")
    if os.path.isdir(path):
        raise UsageError(f"{option}: {path} is a directory, expected a file")
    if not os.path.isfile(path):
        raise UsageError(f"{option}: {path} is not a regular file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    return path


def load_array(path, option: str) -> np.ndarray:
    """A real numeric array from a ``.npy`` file; never unpickles anything.

    Rejected with a :class:`UsageError` naming ``option``: missing paths,
    directories, ``.npz`` archives, files that are not ``.npy`` arrays, object
    (pickled) arrays, complex data (its imaginary part would be lost), non-numeric
    dtypes and NaN or infinite values.
    """
    path = check_input_file(path, option)
    if path.lower().endswith(".npz"):
        raise UsageError(
            f"{option}: {path} is a .npz archive; save the single array with numpy.save "
            "as a .npy file"
        )
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic.startswith(b"PK\x03\x04"):
        raise UsageError(f"{option}: {path} is a .npz archive, expected a single .npy array")
    if magic != b"\x93NUMPY":
        raise UsageError(f"{option}: {path} is not a .npy array file (one written by numpy.save)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise UsageError(
                f"{option}: {path} holds Python objects (pickled data), which are never "
                "loaded; save a numeric array"
            ) from None
        raise UsageError(f"{option}: {path} is not a .npy array file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise UsageError(f"{option}: cannot read {path} as a .npy array ({exc})") from None
    if not isinstance(loaded, np.ndarray):  # defensive: np.load of a .npy gives an array
        raise UsageError(f"{option}: {path} does not hold a single array")
    if loaded.dtype.kind == "c":
        raise UsageError(
            f"{option}: {path} holds complex numbers (dtype {loaded.dtype}); the attention "
            "inputs are real: pass the real part (or real and imaginary parts as columns)"
        )
    if loaded.dtype.kind not in "biuf":
        raise UsageError(f"{option}: {path} must hold a numeric array, got dtype {loaded.dtype}")
    if loaded.dtype.kind == "f" and not np.isfinite(loaded).all():
        raise UsageError(f"{option}: {path} contains NaN or infinite values")
    return loaded


# -- outputs ----------------------------------------------------------------------------


def _nearest_existing(path: str) -> str:
    """The longest existing prefix directory of ``path`` (``path`` itself if it exists)."""
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return probe


class OutputDir:
    """The output directory of a command, checked before any computation.

    Parameters
    ----------
    path : str
        The ``--out`` directory; created (with its parents) when the results are
        committed if it does not exist.
    names : iterable of str
        The result files the command will write into it.
    overwrite : bool
        Replace existing result files (else a :class:`UsageError` before computing);
        those of ``owned`` that this run does not write are removed.
    option : str
        The option's name for messages.
    owned : iterable of str
        Every result file the command can write (``names`` are those of this run).

    A new output directory gets the permissions of the umask, as ``mkdir`` would
    give it (the staging directory it was is private while it is written).

    The results are written into :attr:`staging` (a fresh hidden directory on the
    same file system) and moved into ``path`` by :meth:`commit`; :meth:`discard`
    (also called by ``with``-exit on an error) removes the staging directory.
    """

    def __init__(self, path, names, *, overwrite=False, option="--out", owned=()):
        self.path = os.fspath(path)
        self.names = list(names)
        # every file the command can write: an old one this run does not write would
        # sit beside the new results as if it were one of them
        self.owned = list(dict.fromkeys([*self.names, *owned]))
        self.overwrite = overwrite
        self.option = option
        self._check()
        self.staging = self._make_staging()

    def _check(self):
        path, option = self.path, self.option
        if not path:
            raise UsageError(f"{option} must name a directory")
        if os.path.lexists(path) and not os.path.isdir(path):
            raise UsageError(f"{option} {path} exists and is not a directory")
        anchor = _nearest_existing(path)
        if not os.path.isdir(anchor):
            raise UsageError(
                f"{option} {path}: {anchor} is not a directory, so nothing can be created under it"
            )
        if os.path.isdir(path):
            self._check_conflicts(self.owned)

    def _check_conflicts(self, names):
        clash = [n for n in names if os.path.lexists(os.path.join(self.path, n))]
        folders = [n for n in clash if os.path.isdir(os.path.join(self.path, n))]
        if folders:
            raise UsageError(
                f"{self.option} {self.path}: {', '.join(folders)} would be replaced but "
                "is a directory"
            )
        if clash and not self.overwrite:
            raise UsageError(
                f"{self.option} {self.path} already holds {', '.join(clash)}; pass --overwrite "
                "to replace them, or choose another directory"
            )

    def _make_staging(self):
        anchor = _nearest_existing(self.path)
        try:
            return tempfile.mkdtemp(prefix=".favorkern-partial-", dir=anchor)
        except OSError as exc:
            raise UsageError(
                f"{self.option} {self.path}: cannot write in {anchor} ({exc.strerror or exc})"
            ) from None

    def file(self, name: str) -> str:
        """Where to write the result ``name`` (inside the staging directory)."""
        return os.path.join(self.staging, name)

    def commit(self) -> list[str]:
        """Move the staged results into place; returns their final paths."""
        written = sorted(os.listdir(self.staging))
        if not os.path.isdir(self.path):
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            try:
                os.rename(self.staging, self.path)  # the whole directory at once
            except OSError:
                os.makedirs(self.path, exist_ok=True)
            else:
                self.staging = None
                os.chmod(self.path, 0o777 & ~_umask())  # mkdtemp made it 0700
                return [os.path.join(self.path, name) for name in written]
        try:
            self._check_conflicts(written)  # a file may have appeared meanwhile
        except UsageError as exc:
            kept, self.staging = self.staging, None
            raise UsageError(f"{exc}; the new results are kept in {kept}") from None
        for name in written:
            os.replace(os.path.join(self.staging, name), os.path.join(self.path, name))
        for name in self.owned:
            stale = os.path.join(self.path, name)
            if name not in written and os.path.isfile(stale):
                os.remove(stale)  # checked: only with overwrite can it exist here
        self.discard()
        return [os.path.join(self.path, name) for name in written]

    def discard(self) -> None:
        """Remove the staging directory and anything in it."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.discard()
        return False


def _umask() -> int:
    """The process's umask (read by setting it, then set back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
