"""Reading pickled data files (CIFAR's python batches) without letting them run code.

A pickle names the callables that rebuild its objects, so `pickle.load` on a downloaded or copied file
runs whatever the file names (`os.system`, ...). This unpickler resolves only the few names that plain
containers and numpy arrays need; anything else is a DataError naming the file and the refused name.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

from ..errors import DataError, one_line

#: (module, name) a data pickle may reference. numpy 1.x files say `numpy.core`, numpy 2.x `numpy._core`;
#: `_codecs.encode` is how protocol-2 pickles written by Python 3 store bytes.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),
    ("builtins", "set"): ("builtins", "set"),
    ("builtins", "frozenset"): ("builtins", "frozenset"),
    ("builtins", "bytearray"): ("builtins", "bytearray"),
    ("__builtin__", "set"): ("builtins", "set"),
    ("__builtin__", "frozenset"): ("builtins", "frozenset"),
    ("__builtin__", "bytearray"): ("builtins", "bytearray"),
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a callable outside ALLOWED_GLOBALS."""


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise RefusedGlobal(f"{module}.{name}")
        return getattr(importlib.import_module(target[0]), target[1])


def _refuse_object_arrays(value: Any) -> None:
    """Object arrays hold arbitrary Python objects; data files have no business containing them."""
    import numpy as np

    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        raise pickle.UnpicklingError("an array of Python objects")
    if isinstance(value, dict):
        for item in (*value.keys(), *value.values()):
            _refuse_object_arrays(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _refuse_object_arrays(item)


def load_data_pickle(path: Path, what: str, encoding: str = "latin1") -> Any:
    """The plain data (dicts, lists, strings, numbers, numpy arrays) in a pickle file, or a one-line
    DataError; never calls anything the file names beyond ALLOWED_GLOBALS."""
    try:
        data = _DataUnpickler(io.BytesIO(Path(path).read_bytes()), encoding=encoding).load()
        _refuse_object_arrays(data)
    except RefusedGlobal as exc:
        raise DataError(f"{path}: refused to load: the file asks to call {exc}, which a {what} never contains (tampered or not a {what})") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as exc:
        raise DataError(f"{path}: not a readable {what} ({one_line(exc, with_type=True)})") from None
    except RecursionError:
        raise DataError(f"{path}: not a readable {what} (nested too deeply)") from None
    return data
