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
