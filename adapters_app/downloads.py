"""File downloads of adapters (a zip of the PEFT folder) and exports (a GGUF file, or a zip of a
merged model folder). Callers check access first; the files stream from storage."""
from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from django.core.files.storage import default_storage
from django.http import FileResponse

from adapters_app.models import AdapterExport, LoRAAdapter
from adapters_app.services import adapter_slug
from nexus.errors import NexusError
from nexus.storage import local_path


def _zip_folder(prefix: str, arc_root: str) -> tempfile.SpooledTemporaryFile:
    spool = tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024)
    with local_path(prefix) as folder, zipfile.ZipFile(spool, "w", zipfile.ZIP_DEFLATED) as zf:
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
        if not files:
            raise NexusError(f"The files of {arc_root} are missing from storage.", code="missing", status_code=410)
        for path in files:
            zf.write(path, f"{arc_root}/{path.relative_to(folder).as_posix()}")
    spool.seek(0)
    return spool


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
