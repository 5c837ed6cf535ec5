from __future__ import annotations

from django.contrib import admin

from deployments_app.models import Deployment, DeploymentArm, DeploymentRequest


class ArmInline(admin.TabularInline):
    model = DeploymentArm
    extra = 0
    fields = ["label", "adapter", "export", "weight", "host", "port", "pid", "healthy_at"]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "team", "base_model", "status", "created_at", "started_at", "stopped_at"]
    list_filter = ["status", "team"]
    search_fields = ["name"]
    inlines = [ArmInline]


@admin.register(DeploymentRequest)
class DeploymentRequestAdmin(admin.ModelAdmin):
    list_display = ["id", "deployment", "arm", "endpoint", "status_code", "prompt_tokens", "completion_tokens",
                    "latency_ms", "created_at"]
    list_filter = ["deployment", "status_code"]
