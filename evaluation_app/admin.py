"""Evaluation in the Django admin: sessions, ratings, judge runs (the judge's key never shown) and
speed tests, for the operator to look at; the work itself is started from the pages or the API."""
from __future__ import annotations

from django.contrib import admin

from datasets_app.admin import SECRET_FIELDS
from evaluation_app.models import ComparisonRating, ComparisonSession, JudgeRun, PerformanceTest, PromptComparison

RUN_FIELDS = ["status", "progress", "stage", "worker", "error", "created_at", "updated_at", "started_at",
              "completed_at"]


class PromptComparisonInline(admin.TabularInline):
    model = PromptComparison
    fields = ["index", "prompt", "status", "a_is_base", "error"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(ComparisonSession)
class ComparisonSessionAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "comparison_type", "base_model", "adapter", "status", "runs", "created_at"]
    list_filter = ["comparison_type", "status", "team"]
    search_fields = ["name"]
    raw_id_fields = ["adapter", "dataset", "created_by"]
    readonly_fields = RUN_FIELDS + ["sides", "seed", "runs"]
    inlines = [PromptComparisonInline]


@admin.register(ComparisonRating)
class ComparisonRatingAdmin(admin.ModelAdmin):
    list_display = ["comparison", "rater", "preferred", "updated_at"]
    list_filter = ["preferred"]
    raw_id_fields = ["comparison", "rater"]


@admin.register(JudgeRun)
class JudgeRunAdmin(admin.ModelAdmin):
    list_display = ["id", "session", "team", "provider", "model", "status", "calls", "created_at"]
    list_filter = ["status", "provider", "team"]
    exclude = SECRET_FIELDS
    raw_id_fields = ["session", "connection", "deployment", "created_by"]
    readonly_fields = RUN_FIELDS + ["key_last4", "calls", "tokens_in", "tokens_out"]


@admin.register(PerformanceTest)
class PerformanceTestAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "adapter", "status", "created_at"]
    list_filter = ["status", "team"]
    raw_id_fields = ["adapter", "created_by"]
    readonly_fields = RUN_FIELDS + ["base_model_metrics", "finetuned_metrics", "comparison"]
