"""Evaluation's rows: comparison sessions (base vs fine-tuned, side by side or blind) with their
comparisons and human ratings, LLM-judge runs with one evaluation per comparison, and speed tests.

Sessions, judge runs and speed tests are job-kit rows (see evaluation_app/jobs.py): `status`,
`worker`, `updated_at`, `cancel_requested`. Everything belongs to a team."""
from __future__ import annotations

from django.conf import settings
from django.db import models

from datasets_app.distillation.models import TeacherFields
from nexus.models import Team


class RunStatus(models.TextChoices):
    CREATED = "created", "Created"  # a comparison session before its first run
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)
ENDED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class RunFields(models.Model):
    """What the job kit needs of a row, and what every evaluation run shows."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True)
    progress = models.FloatField(default=0.0, help_text="0-1")
    stage = models.CharField(max_length=300, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class ComparisonSession(RunFields):
    """The design's ComparisonSession (10.2.2). Its two models are `sides` (the "base" role first,
    the "finetuned" role second): by default the base model and base + the adapter, or any two of
    base, adapter, merged GGUF export and deployment."""

    class Type(models.TextChoices):
        SINGLE = "single", "Single prompt"
        BATCH = "batch", "Batch"
        CONVERSATION = "conversation", "Conversation"
        BLIND = "blind", "Blind"

    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    comparison_type = models.CharField(max_length=16, choices=Type.choices, default=Type.BATCH)
    base_model = models.ForeignKey("nexus.BaseModel", on_delete=models.PROTECT, related_name="+")
    adapter = models.ForeignKey("adapters_app.LoRAAdapter", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="comparison_sessions")
    sides = models.JSONField(default=list, help_text="[base role, finetuned role]: type, label and the ids they name")
    dataset = models.ForeignKey("datasets_app.Dataset", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+", help_text="the test split the prompts came from")
    system_prompt = models.TextField(blank=True)
    sampling_params = models.JSONField(default=dict, blank=True)
    seed = models.BigIntegerField(default=0, help_text="draws A/B in blind mode and each prompt's sampling seed")
    raters_required = models.PositiveSmallIntegerField(
        default=1, help_text="blind: ratings per comparison before the session is revealed")
    runs = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.CREATED, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["team", "-created_at"], name="evalsession_team_created")]

    def __str__(self) -> str:
        return self.name

    @property
    def blind(self) -> bool:
        return self.comparison_type == self.Type.BLIND


class PromptComparison(models.Model):
    """One prompt through both models: the design's PromptComparison. Responses are stored by
    role (base_response, finetuned_response: the design's ModelResponse); `a_is_base` says which
    one a rater sees as A (drawn at random per comparison in blind mode, else A is base)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    session = models.ForeignKey(ComparisonSession, on_delete=models.CASCADE, related_name="comparisons")
    index = models.PositiveIntegerField()
    prompt = models.TextField(help_text="the (last) user prompt")
    messages = models.JSONField(default=list, help_text="the conversation given: user/assistant turns")
    seed = models.BigIntegerField(default=0)
    a_is_base = models.BooleanField(default=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    base_response = models.JSONField(null=True, blank=True)
    finetuned_response = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session", "index"]
        constraints = [models.UniqueConstraint(fields=["session", "index"], name="promptcomparison_unique_index")]

    def __str__(self) -> str:
        return f"{self.session_id}#{self.index}"


class ComparisonRating(models.Model):
    """One team member's rating of one comparison; rating again replaces it. Stored in model
    terms (base / finetuned) whatever the rater saw as A and B."""

    class Preferred(models.TextChoices):
        BASE = "base", "Base"
        FINETUNED = "finetuned", "Fine-tuned"
        TIE = "tie", "Tie"

    comparison = models.ForeignKey(PromptComparison, on_delete=models.CASCADE, related_name="ratings")
    rater = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    preferred = models.CharField(max_length=16, choices=Preferred.choices)
    ratings = models.JSONField(default=dict, blank=True, help_text="base|finetuned -> criterion -> 1-5")
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["comparison", "created_at"]
        constraints = [models.UniqueConstraint(fields=["comparison", "rater"], name="comparisonrating_unique_rater")]


class JudgeRun(RunFields, TeacherFields):
    """An LLM judge over a session's comparisons (10.4): every pair judged in both orders."""

    session = models.ForeignKey(ComparisonSession, on_delete=models.CASCADE, related_name="judge_runs")
    connection = models.ForeignKey("datasets_app.TeacherConnection", null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    evaluation_criteria = models.JSONField(default=list)
    scoring_rubric = models.JSONField(default=dict, blank=True)
    num_evaluations = models.PositiveIntegerField(default=1)
    concurrency = models.PositiveSmallIntegerField(default=4, help_text="judge requests in flight at once")
    calls = models.PositiveIntegerField(default=0, help_text="judge requests sent")
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]


class JudgeEvaluation(models.Model):
    """The design's JudgeEvaluation for one comparison, stored as it is decided (a resumed run
    does not ask the judge again for it)."""

    class Status(models.TextChoices):
        DONE = "done", "Done"
        ERROR = "error", "Error"

    run = models.ForeignKey(JudgeRun, on_delete=models.CASCADE, related_name="evaluations")
    comparison = models.ForeignKey(PromptComparison, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices)
    judge_verdict = models.CharField(max_length=16, blank=True, help_text="base | finetuned | tie")
    judge_reasoning = models.TextField(blank=True)
    criteria_scores = models.JSONField(default=dict, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    consistent = models.BooleanField(null=True, help_text="both orders agreed (every round)")
    orders = models.JSONField(default=list, blank=True, help_text="each order's verdict in model terms, per round")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "comparison__index"]
        constraints = [models.UniqueConstraint(fields=["run", "comparison"], name="judgeevaluation_unique")]


class PerformanceTest(RunFields):
    """The design's PerformanceTest (10.5.2): the base model against base + adapter on real
    llama.cpp servers; results are the design's PerformanceResults."""

    name = models.CharField(max_length=200, blank=True)
    adapter = models.ForeignKey("adapters_app.LoRAAdapter", on_delete=models.CASCADE, related_name="performance_tests")
    base_model = models.ForeignKey("nexus.BaseModel", on_delete=models.PROTECT, related_name="+")
    test_prompts = models.JSONField(default=list)
    output_lengths = models.JSONField(default=list)
    batch_sizes = models.JSONField(default=list)
    num_iterations = models.PositiveIntegerField(default=10)
    warmup_iterations = models.PositiveIntegerField(default=2)
    base_model_metrics = models.JSONField(null=True, blank=True)
    finetuned_metrics = models.JSONField(null=True, blank=True)
    comparison = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]


# -- benchmarks (10.3) ------------------------------------------------------------------------------------


class CustomBenchmark(models.Model):
    """A team's own test set (10.3.3): the design's test_cases and scoring, as validated."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="custom_benchmarks")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    test_cases = models.JSONField(default=list)
    scoring = models.JSONField(default=dict)
    source_dataset = models.ForeignKey("datasets_app.Dataset", null=True, blank=True, on_delete=models.SET_NULL,
                                       related_name="+", help_text="made from this dataset's test split")
    sha256 = models.CharField(max_length=64, help_text="of the test cases and scoring: a changed set is not the "
                                                        "same benchmark for the base-score cache")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="custom_benchmark_unique_name")]

    def __str__(self) -> str:
        return self.name

    @property
    def key(self) -> str:
        return f"custom:{self.pk}"


class BenchmarkJob(RunFields, TeacherFields):
    """The design's BenchmarkJob (10.3.2): base and base + adapter on the same items with the same
    settings, on a GPU-queue worker. The optional judge (TeacherFields, `model` blank = none)
    checks custom cases' `required_tone`."""

    name = models.CharField(max_length=200)
    base_model = models.ForeignKey("nexus.BaseModel", on_delete=models.PROTECT, related_name="+")
    adapter = models.ForeignKey("adapters_app.LoRAAdapter", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="benchmark_jobs")
    connection = models.ForeignKey("datasets_app.TeacherConnection", null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    benchmarks = models.JSONField(default=list, help_text="the design's BenchmarkConfig list, with defaults filled")
    backend = models.CharField(max_length=32, default="hf")
    lm_eval_version = models.CharField(max_length=32, blank=True)
    self_check = models.JSONField(default=dict, blank=True, help_text="per model: the backend check and its probes")
    current = models.CharField(max_length=200, blank=True, help_text="the benchmark being run")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class BenchmarkResult(models.Model):
    """The design's BenchmarkResult for one benchmark of a job, with its interval, test and provenance."""

    job = models.ForeignKey(BenchmarkJob, on_delete=models.CASCADE, related_name="results")
    position = models.PositiveIntegerField(default=0)
    benchmark_name = models.CharField(max_length=200)
    label = models.CharField(max_length=200, blank=True)
    metric = models.CharField(max_length=40, blank=True)
    general = models.BooleanField(default=True, help_text="a general-capability benchmark (not the team's own set)")
    custom_benchmark = models.ForeignKey(CustomBenchmark, null=True, blank=True, on_delete=models.SET_NULL,
                                         related_name="+")
    base_model_score = models.FloatField(help_text="percent")
    finetuned_score = models.FloatField(null=True, blank=True, help_text="percent")
    improvement = models.FloatField(null=True, blank=True, help_text="percentage points")
    relative_improvement = models.FloatField(null=True, blank=True, help_text="percent of the base score")
    num_samples = models.PositiveIntegerField(default=0)
    interval = models.JSONField(null=True, blank=True, help_text="paired bootstrap 95% interval, percentage points")
    change = models.CharField(max_length=16, blank=True, help_text="improved, regressed or no_change")
    mcnemar = models.JSONField(null=True, blank=True)
    detailed_results = models.JSONField(default=dict)
    provenance = models.JSONField(default=dict, help_text="lm-eval version, task YAML, data source, shots, cache")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "position"]
        constraints = [models.UniqueConstraint(fields=["job", "benchmark_name"], name="benchmark_result_unique")]


class BaseScoreCache(models.Model):
    """A base model's side of one benchmark for one configuration (key: model files, data, settings,
    lm-eval version), reused by later jobs instead of running the base model again."""

    key = models.CharField(max_length=64, unique=True)
    base_model = models.ForeignKey("nexus.BaseModel", on_delete=models.CASCADE, related_name="+")
    benchmark_name = models.CharField(max_length=200)
    side = models.JSONField()
    description = models.JSONField(default=dict)
    hits = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
