"""Evaluation in the Django admin: sessions, ratings, judge runs (the judge's key never shown) and
speed tests, benchmark jobs with their results, custom test sets and the base-score cache (an
operator may delete cached base sides to force a rerun), for the operator to look at; the work itself is started from the pages or the API."""
from __future__ import annotations

from django.contrib import admin

from datasets_app.admin import SECRET_FIELDS
from evaluation_app.models import (
    BaseScoreCache,
    BenchmarkJob,
    BenchmarkResult,
    ComparisonRating,
    ComparisonSession,
    CustomBenchmark,
    JudgeRun,
    PerformanceTest,
    PromptComparison,
)

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


class BenchmarkResultInline(admin.TabularInline):
    model = BenchmarkResult
    fields = ["benchmark_name", "base_model_score", "finetuned_score", "improvement", "change", "num_samples"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(BenchmarkJob)
class BenchmarkJobAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "base_model", "adapter", "status", "lm_eval_version", "created_at"]
    list_filter = ["status", "team"]
    search_fields = ["name"]
    exclude = SECRET_FIELDS
    raw_id_fields = ["adapter", "connection", "deployment", "created_by"]
    readonly_fields = RUN_FIELDS + ["benchmarks", "backend", "lm_eval_version", "self_check", "current", "key_last4"]
    inlines = [BenchmarkResultInline]


@admin.register(CustomBenchmark)
class CustomBenchmarkAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "source_dataset", "created_at"]
    list_filter = ["team"]
    search_fields = ["name"]
    raw_id_fields = ["source_dataset", "created_by"]
    readonly_fields = ["sha256"]


@admin.register(BaseScoreCache)
class BaseScoreCacheAdmin(admin.ModelAdmin):
    list_display = ["benchmark_name", "base_model", "hits", "created_at"]
    list_filter = ["benchmark_name"]
    readonly_fields = ["key", "base_model", "benchmark_name", "side", "description", "hits", "created_at"]
