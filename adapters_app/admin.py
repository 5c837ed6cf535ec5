from __future__ import annotations

from django.contrib import admin

from adapters_app.models import AdapterExport, LoRAAdapter


class ExportInline(admin.TabularInline):
    model = AdapterExport
    extra = 0
    fields = ["kind", "quantization", "status", "progress", "verified", "size_bytes", "created_at"]
    readonly_fields = fields
    can_delete = False


@admin.register(LoRAAdapter)
class LoRAAdapterAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "team", "base_model", "source", "final_loss", "size_bytes", "is_merged",
                    "created_at"]
    list_filter = ["team", "base_model", "source", "is_merged"]
    search_fields = ["name", "sha256"]
    readonly_fields = ["sha256", "path", "size_bytes", "gguf_path", "created_at"]
    inlines = [ExportInline]


@admin.register(AdapterExport)
class AdapterExportAdmin(admin.ModelAdmin):
    list_display = ["id", "adapter", "team", "kind", "quantization", "status", "progress", "verified", "size_bytes",
                    "created_at"]
    list_filter = ["kind", "status", "verified", "team"]
    readonly_fields = ["sha256", "verification", "path", "worker", "heartbeat_at", "started_at", "finished_at"]
