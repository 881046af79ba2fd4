"""A read-only HDF5 handle that is safe to use from DataLoader workers and process pools."""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from rmi.errors import InputError


class LazyH5:
    """Opens ``path`` read-only on first use, once per process.

    A handle opened in a parent is never reused in a forked child (h5py handles must not cross
    ``fork``), and pickling (spawned workers) drops it. ``what`` names the file kind in errors.
    """

    def __init__(self, path: str | Path, what: str = "HDF5 file"):
        self.path = Path(path)
        self.what = what
        self._file: h5py.File | None = None
        self._pid: int | None = None

    @property
    def file(self) -> h5py.File:
        """The open ``h5py.File`` of this process; a one-line ``InputError`` if it cannot be opened."""
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise InputError(self.path, f"cannot open {self.what} ({err})") from err
            self._pid = os.getpid()
        return self._file

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None}

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
