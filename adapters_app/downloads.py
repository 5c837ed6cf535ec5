"""File downloads of adapters (a zip of the PEFT folder) and exports (a GGUF file, or a zip of a
merged model folder). Callers check access first; the files stream from storage."""
from __future__ import annotations

import shutil
import tempfile
import zipfile

from django.core.files.storage import default_storage
from django.http import FileResponse

from adapters_app.models import AdapterExport, LoRAAdapter
from adapters_app.services import adapter_slug
from nexus.errors import NexusError
from nexus.storage import MARKER, is_remote, stage_down, stored_files


def _zip_folder(prefix: str, arc_root: str) -> tempfile.SpooledTemporaryFile:
    """A zip of a stored folder, each file streamed from storage (the completion marker left out)."""
    names = _stored_names(prefix)
    if not names:
        raise NexusError(f"The files of {arc_root} are missing from storage.", code="missing", status_code=410)
    spool = tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024)
    with zipfile.ZipFile(spool, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            with default_storage.open(f"{prefix}/{name}", "rb") as src, zf.open(f"{arc_root}/{name}", "w") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
    spool.seek(0)
    return spool


def _stored_names(prefix: str) -> list[str]:
    """The folder's files: the manifest's on an object store (none while incomplete), else the folder's."""
    if is_remote():
        try:
            return stored_files(prefix)  # the manifest never lists the marker
        except NexusError:
            return []
    folder = stage_down(prefix)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER)


def adapter_download_response(*, adapter: LoRAAdapter) -> FileResponse:
    name = adapter_slug(adapter)
    return FileResponse(_zip_folder(adapter.path, name), as_attachment=True, filename=f"{name}.zip",
                        content_type="application/zip")


def export_download_response(*, export: AdapterExport) -> FileResponse:
    if export.status != AdapterExport.Status.COMPLETED or not export.path:
        raise NexusError(f"Export #{export.pk} is {export.status}; only a completed, verified export can be "
                         "downloaded.", code="not_ready", status_code=409)
    if export.kind == AdapterExport.Kind.MERGE:
        name = f"{adapter_slug(export.adapter)}-merged"
        return FileResponse(_zip_folder(export.path, name), as_attachment=True, filename=f"{name}.zip",
                            content_type="application/zip")
    if not default_storage.exists(export.path):
        raise NexusError(f"The file of export #{export.pk} is missing from storage.", code="missing", status_code=410)
    return FileResponse(default_storage.open(export.path, "rb"), as_attachment=True, filename=export.filename,
                        content_type="application/octet-stream")
