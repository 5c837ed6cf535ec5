"""Artifacts go through Django's storage API; engines get local paths from here."""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage


def storage_save_bytes(name: str, data: bytes) -> str:
    if default_storage.exists(name):
        default_storage.delete(name)
    return default_storage.save(name, ContentFile(data))


def storage_save_file(name: str, path: Path) -> str:
    """Copy a local file to `name` (replacing what is there), streaming it; returns the stored name."""
    if default_storage.exists(name):
        default_storage.delete(name)
    with path.open("rb") as fh:
        return default_storage.save(name, File(fh))


def storage_save_folder(prefix: str, folder: Path) -> str:
    """Copy every file of a local folder under `prefix`; returns the prefix."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            storage_save_file(f"{prefix}/{path.relative_to(folder).as_posix()}", path)
    return prefix


def storage_delete_prefix(prefix: str) -> None:
    try:
        local = Path(default_storage.path(prefix))
    except NotImplementedError:  # remote storage: delete file by file
        dirs, files = default_storage.listdir(prefix)
        for f in files:
            default_storage.delete(f"{prefix}/{f}")
        for d in dirs:
            storage_delete_prefix(f"{prefix}/{d}")
        return
    if local.is_dir():
        shutil.rmtree(local, ignore_errors=True)
    elif local.exists():
        local.unlink()


@contextmanager
def local_path(name: str) -> Iterator[Path]:
    """A local filesystem path for a stored file or folder (a temporary copy for remote storage)."""
    try:
        local = Path(default_storage.path(name))
    except NotImplementedError:  # remote storage has no local path
        local = None
    if local is not None:
        # yield outside the try: an error raised by the caller's block must not be taken for
        # "remote storage" and make the context manager yield a second time
        yield local
        return
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / Path(name).name
        with default_storage.open(name, "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        yield target
