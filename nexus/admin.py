from __future__ import annotations

from django.contrib import admin

from nexus.models import BaseModel, JobEvent, Membership, Team


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "personal_owner", "viewers_use_deployments", "viewers_rate_evaluations", "created_at"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username", "team__name"]


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ["name", "architecture", "parameter_count", "context_length", "has_chat_template", "trainable", "created_at"]
    list_filter = ["architecture", "has_chat_template"]
    search_fields = ["name"]


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    list_display = ["job_kind", "job_id", "seq", "type", "level", "message", "created_at"]
    list_filter = ["job_kind", "type", "level"]
    search_fields = ["message"]
