"""Refuse a checkpoint that does not load, in one line, before anything else runs.

A Lightning checkpoint is a ``torch.save`` zip archive. A missing file, a truncated download, a
file of another kind or one holding objects that a safe load refuses each get one message that
names the file and says what to do. The file is opened with ``weights_only=True`` (memory-mapped:
nothing is read but the pickled structure), and torch's advice on failure, to retry with the
unsafe loader, is never repeated: that would run code from a file of unknown origin.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

__all__ = ["RESERVED_CKPT_PATHS", "check_checkpoint"]

# Values of --ckpt_path that Lightning or lit_align resolve themselves (and "registry:…").
RESERVED_CKPT_PATHS = ("last", "best", "hpc", "registry")

_FIX = (
    "pass a checkpoint written by a lit_align run (runs/NAME/version_N/checkpoints/*.ckpt), "
    "--ckpt_path last, or no --ckpt_path to start from the config's model"
)


def check_checkpoint(path: str | Path, weights_only: bool = True) -> None:
    """Raise ``FileNotFoundError`` or ``ValueError`` (one line, the file named) unless ``path``
    is a checkpoint that loads.

    Args:
        path: the ``--ckpt_path`` given.
        weights_only: probe with a safe load (the default of ``torch.load`` and Lightning). When
            the user has turned Lightning's safe loading off for a run, only the archive is
            checked: this function never unpickles a file unsafely itself.
    """
    import torch

    file = Path(path)
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise FileNotFoundError(f"--ckpt_path {path}: {what}; {_FIX}")
    if not zipfile.is_zipfile(file):
        size = file.stat().st_size
        raise ValueError(
            f"--ckpt_path {path}: not a checkpoint ({size:,} bytes that are not a torch.save "
            f"archive: a truncated copy or another kind of file); {_FIX}"
        )
    if not weights_only:
        return
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        first = str(err).split("\n")[0].strip()
        if "Weights only load failed" in first or not first:
            first = "it holds objects that a safe load (weights_only=True) refuses"
        raise ValueError(
            f"--ckpt_path {path}: corrupt or not a checkpoint: {first}; {_FIX}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, KeyError) as err:
        first = str(err).split("\n")[0].strip() or type(err).__name__
        raise ValueError(f"--ckpt_path {path}: corrupt checkpoint ({first}); {_FIX}") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(
            f"--ckpt_path {path}: a torch file but not a Lightning checkpoint (no state_dict); "
            f"{_FIX}"
        )
