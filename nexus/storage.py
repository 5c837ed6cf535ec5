"""Artifacts go through Django's storage API: the local folder on one machine, an S3-compatible store
(django-storages' S3 backend) when workers run on several hosts. Engines need local paths; this
module gives them one.

Folders (adapters, checkpoints, merged models, uploaded base models) are written by `stage_up`:
every file first, then a completion marker (`.nexus-complete`, the folder's manifest) last, so a
folder whose upload was cut short is never taken for a whole one. `stage_down` reads the marker,
downloads the listed files into a partial folder of this host's cache (NEXUS_CACHE_DIR), checks
their sizes and renames it into place; a folder already cached with the same manifest is used as
it is. Single files (datasets, GGUF files) are single objects, whole or absent: `stage_file` keeps
them in the same cache, keyed by the store's ETag. On the local folder nothing is copied: the
stored path is returned.

A name that is an absolute path is a file or folder of the host itself (the operator's catalog on
every host); a relative name is a storage name.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Iterator

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage

from nexus.errors import NexusError
from nexus.modelfiles import TENSOR_SHAPES_FILE

MARKER = ".nexus-complete"
TENSORS = TENSOR_SHAPES_FILE
TRANSFER_THREADS = 8
MULTIPART_BYTES = 8 * 1024 * 1024
# what a model folder needs without its weights: tokenizer, config, chat template
MODEL_META = ("*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*")


def name_slug(name: str) -> str:
    """A name as it can stand in a storage key or a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:60]


def is_remote() -> bool:
    """True when artifacts live in an object store (no local path for a storage name)."""
    try:
        default_storage.path("probe")
    except NotImplementedError:
        return True
    return False


def storage_save_bytes(name: str, data: bytes) -> str:
    if default_storage.exists(name):
        default_storage.delete(name)
    return default_storage.save(name, ContentFile(data))


def storage_save_file(name: str, path: Path) -> str:
    """Copy a local file to `name` (replacing what is there), streaming it; returns the stored name."""
    if is_remote():
        _s3_upload(path, name)
        return name
    if default_storage.exists(name):
        default_storage.delete(name)
    with path.open("rb") as fh:
        return default_storage.save(name, File(fh))


# -- folders ---------------------------------------------------------------------------------------

def _manifest(folder: Path, summary: dict[str, Any] | None) -> dict[str, Any]:
    """Files and sizes, the caller's summary, and the tensor shapes from each safetensors header (so
    a host can read a model's shapes without fetching its weights)."""
    from safetensors import safe_open

    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MARKER}
    tensors = {}
    for rel in files:
        if rel.endswith(".safetensors"):
            try:
                with safe_open(str(folder / rel), framework="pt") as f:
                    tensors[rel] = {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
            except Exception:  # noqa: BLE001 - not a readable safetensors file: it is stored all the same
                continue
    return {"files": files, "size_bytes": sum(files.values()), "summary": summary or {}, "tensors": tensors}


def stage_up(folder: Path, prefix: str, *, summary: dict[str, Any] | None = None) -> str:
    """Store every file of a local folder under `prefix`, the completion marker last; returns the
    prefix. An earlier folder under the same prefix stops being complete before any file changes."""
    manifest = _manifest(folder, summary)
    if not is_remote():
        target = Path(default_storage.path(prefix))
        partial = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:8]}")
        shutil.copytree(folder, partial, ignore=shutil.ignore_patterns(MARKER))
        (partial / MARKER).write_text(json.dumps(manifest))
        _replace(partial, target)
        return prefix
    client, bucket = _s3()
    client.delete_object(Bucket=bucket, Key=_key(f"{prefix}/{MARKER}"))
    _each(manifest["files"], lambda rel, threads: _s3_upload(folder / rel, f"{prefix}/{rel}", threads=threads))
    client.put_object(Bucket=bucket, Key=_key(f"{prefix}/{MARKER}"), Body=json.dumps(manifest).encode())
    return prefix


def storage_save_folder(prefix: str, folder: Path) -> str:
    """Copy every file of a local folder under `prefix` (marker last); returns the prefix."""
    return stage_up(folder, prefix)


def same_files(manifest: dict[str, Any] | None, folder: Path) -> bool:
    """Whether a stored folder's manifest lists exactly this local folder's files and sizes."""
    return manifest is not None and manifest["files"] == _manifest(folder, None)["files"]


def stored_size(name: str) -> int | None:
    """The size of a stored file, None when it is not there."""
    return default_storage.size(name) if default_storage.exists(name) else None


def folder_manifest(prefix: str) -> dict[str, Any] | None:
    """The marker of a complete stored folder (files, sizes, summary); None when it is not complete."""
    if not is_remote():
        marker = Path(default_storage.path(prefix)) / MARKER
        return json.loads(marker.read_text()) if marker.is_file() else None
    client, bucket = _s3()
    try:
        body = client.get_object(Bucket=bucket, Key=_key(f"{prefix}/{MARKER}"))["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return json.loads(body)


def complete_folders(prefix: str) -> dict[str, dict[str, Any]]:
    """The complete folders directly under `prefix`: {name: manifest}."""
    if not is_remote():
        root = Path(default_storage.path(prefix))
        return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob(f"*/{MARKER}"))} if root.is_dir() else {}
    client, bucket = _s3()
    found = {}
    for key in _list_keys(f"{prefix}/"):
        parts = key.split("/")
        if len(parts) == 2 and parts[1] == MARKER:
            found[parts[0]] = json.loads(client.get_object(Bucket=bucket, Key=_key(f"{prefix}/{key}"))["Body"].read())
    return found


def stage_down(name: str, *, only: tuple[str, ...] | None = None, into: Path | None = None) -> Path:
    """A local folder with the stored folder's files: the host's own folder for an absolute name,
    the stored folder itself on local storage, else this host's cached copy (downloaded when the
    cache does not hold this very manifest). `only`: file name patterns to fetch (e.g. MODEL_META);
    `into`: the folder to fill instead of the cache."""
    if Path(name).is_absolute() or not is_remote():
        local = Path(name) if Path(name).is_absolute() else Path(default_storage.path(name))
        if into is None:
            return local
        shutil.copytree(local, into, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER))
        return into
    manifest = folder_manifest(name)
    if manifest is None:
        raise NexusError(f"'{name}' is not a complete folder in the object store (missing, or its upload never finished)",
                         code="not_found", status_code=404)
    files = {rel: size for rel, size in manifest["files"].items()
             if only is None or any(fnmatch(rel.rsplit("/", 1)[-1], p) for p in only)}
    wanted = json.dumps({"files": files}, sort_keys=True)
    target = into or cache_path("store" if only is None else f"store-{_digest(','.join(only))}", name)
    with _host_lock(target):
        if (target / MARKER).is_file() and (target / MARKER).read_text() == wanted:
            return target
        if into is not None and target.is_dir() and only is None and same_files(manifest, target):
            (target / MARKER).write_text(wanted)  # this host wrote the very files it uploaded
            return target
        partial = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            _each(files, lambda rel, threads: _s3_download(f"{name}/{rel}", partial / rel, files[rel], threads=threads))
            partial.mkdir(parents=True, exist_ok=True)
            if only is not None and manifest.get("tensors"):  # the weights' shapes without the weights
                (partial / TENSORS).write_text(json.dumps(manifest["tensors"]))
            (partial / MARKER).write_text(wanted)
            _replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target


def model_folder(name: str, *, weights: bool = True) -> Path:
    """A model's HF folder on this host; without weights, only what a tokenizer or config read needs."""
    return stage_down(name, only=None if weights else MODEL_META)


# -- single files ----------------------------------------------------------------------------------

def stage_file(name: str) -> Path:
    """A local path for a stored file: an absolute name as it is, the stored file on local storage,
    else this host's cached copy (fetched again when the store's ETag changed)."""
    if not name:
        raise ValueError("stage_file: no name")
    if Path(name).is_absolute():
        return Path(name)
    if not is_remote():
        return Path(default_storage.path(name))
    client, bucket = _s3()
    try:
        head = client.head_object(Bucket=bucket, Key=_key(name))
    except client.exceptions.ClientError as exc:
        raise NexusError(f"'{name}' is not in the object store", code="not_found", status_code=404) from exc
    stamp = json.dumps({"etag": head["ETag"], "size": head["ContentLength"]})
    target = cache_path("store", name)
    sidecar = target.with_name(f"{target.name}{MARKER}")
    with _host_lock(target):
        if target.is_file() and sidecar.is_file() and sidecar.read_text() == stamp:
            return target
        partial = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            _s3_download(name, partial, head["ContentLength"])
            sidecar.unlink(missing_ok=True)
            os.replace(partial, target)
            sidecar.write_text(stamp)
        finally:
            partial.unlink(missing_ok=True)
    return target


@contextmanager
def local_path(name: str) -> Iterator[Path]:
    """A local path for a stored file for the length of a block (a temporary copy on remote
    storage, for files read once such as an uploaded dataset)."""
    if not is_remote():
        yield Path(default_storage.path(name))
        return
    with tempfile.TemporaryDirectory(dir=_tmp_root()) as tmp:
        target = Path(tmp) / Path(name).name
        with default_storage.open(name, "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
        yield target


def storage_delete_prefix(prefix: str) -> None:
    """Delete a stored file or folder (the marker first: a folder being deleted is never complete)."""
    if not is_remote():
        local = Path(default_storage.path(prefix))
        if local.is_dir():
            shutil.rmtree(local, ignore_errors=True)
        elif local.exists():
            local.unlink()
        return
    client, bucket = _s3()
    client.delete_object(Bucket=bucket, Key=_key(f"{prefix}/{MARKER}"))
    keys = [_key(prefix)] + [_key(f"{prefix}/{k}") for k in _list_keys(f"{prefix}/")]
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                     "Quiet": True})


def stored_files(prefix: str) -> list[str]:
    """Relative names of a complete stored folder's files (for streaming them one by one)."""
    manifest = folder_manifest(prefix)
    if manifest is None:
        raise NexusError(f"'{prefix}' is not a complete stored folder", code="not_found", status_code=404)
    return sorted(manifest["files"])


# -- the host's cache ------------------------------------------------------------------------------

def cache_path(*parts: str) -> Path:
    """A path in this host's cache (NEXUS_CACHE_DIR)."""
    path = Path(settings.NEXUS_CACHE_DIR).joinpath(*parts).resolve()
    if not path.is_relative_to(Path(settings.NEXUS_CACHE_DIR).resolve()):
        raise ValueError(f"{parts} leaves the cache")
    return path


def _tmp_root() -> str:
    root = cache_path("tmp")
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


@contextmanager
def _host_lock(target: Path) -> Iterator[None]:
    """One process of this host stages a given target at a time (others wait, then find it cached)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _replace(partial: Path, target: Path) -> None:
    """Put a finished partial folder in place of `target` (an older copy is moved aside, then removed)."""
    old = None
    if target.exists():
        old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(partial, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- S3 --------------------------------------------------------------------------------------------

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _s3():
    """A boto3 client for the store behind default_storage, and its bucket. One client per process
    (boto3 clients are thread-safe; django-storages makes a resource per thread, which costs a
    fraction of a second each), with connections enough for the parallel transfers."""
    options = settings.NEXUS_STORAGE_OPTIONS
    if not options:  # S3 configured through STORAGES by hand: its own connection
        return default_storage.connection.meta.client, default_storage.bucket_name
    key = json.dumps(options, sort_keys=True)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(max_pool_connections=4 * TRANSFER_THREADS, signature_version=options["signature_version"],
                            s3={"addressing_style": options["addressing_style"]})
            client = _clients[key] = boto3.session.Session().client(
                "s3", endpoint_url=options["endpoint_url"], aws_access_key_id=options["access_key"],
                aws_secret_access_key=options["secret_key"], region_name=options["region_name"], config=config)
    return client, options["bucket_name"]


def _key(name: str) -> str:
    location = (settings.NEXUS_STORAGE_OPTIONS or {}).get("location", "").strip("/")
    return f"{location}/{name}" if location else name


def _transfer(threads: int):
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                          max_concurrency=threads, use_threads=threads > 1)


def _s3_upload(path: Path, name: str, threads: int = TRANSFER_THREADS) -> None:
    client, bucket = _s3()
    client.upload_file(str(path), bucket, _key(name), Config=_transfer(threads))


def _s3_download(name: str, target: Path, size: int, threads: int = TRANSFER_THREADS) -> None:
    client, bucket = _s3()
    target.parent.mkdir(parents=True, exist_ok=True)
    client.download_file(bucket, _key(name), str(target), Config=_transfer(threads))
    if target.stat().st_size != size:
        raise NexusError(f"'{name}': downloaded {target.stat().st_size} bytes, the store's manifest says {size}",
                         code="storage_error")


def _each(files: dict[str, int], transfer) -> None:
    """Every file at once on a pool of TRANSFER_THREADS, largest first, a large one in concurrent
    parts of its own (measured against a one-file-at-a-time loop in bench/storage.py)."""
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        list(pool.map(lambda rel: transfer(rel, TRANSFER_THREADS if files[rel] >= MULTIPART_BYTES else 1),
                      sorted(files, key=lambda rel: -files[rel])))


def _list_keys(prefix: str) -> Iterator[str]:
    """Keys under a prefix, relative to it."""
    client, bucket = _s3()
    full = _key(prefix)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=full):
        for item in page.get("Contents", []):
            yield item["Key"][len(full):]
