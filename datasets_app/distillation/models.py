"""Distillation's rows (imported by datasets_app.models, whose app they belong to)."""
from __future__ import annotations

from django.conf import settings
from django.db import models

from nexus.models import Team


class Provider(models.TextChoices):
    OPENAI = "openai", "OpenAI (or any OpenAI-compatible server)"
    ANTHROPIC = "anthropic", "Anthropic"
    DEPLOYED = "deployed", "A model deployed in Nexus"


class TeacherFields(models.Model):
    """What calling a teacher takes; the key only as a secret_encrypt() token."""

    provider = models.CharField(max_length=16, choices=Provider.choices, default=Provider.OPENAI)
    model = models.CharField(max_length=200, blank=True)
    base_url = models.CharField(max_length=500, blank=True)
    deployment = models.ForeignKey("deployments_app.Deployment", null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    api_key_encrypted = models.TextField(blank=True)
    key_last4 = models.CharField(max_length=4, blank=True)
    temperature = models.FloatField(default=0.7)
    max_tokens = models.PositiveIntegerField(default=2048)

    class Meta:
        abstract = True

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.model or (f'deployment-{self.deployment_id}' if self.deployment_id else '?')}"


class TeacherConnection(TeacherFields):
    """A team's saved teacher (or judge): reused by jobs, tested with one cheap call."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="teacher_connections")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=200)
    last_check = models.JSONField(default=dict, blank=True, help_text="the last test: ok, message, problem, at")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="teacherconnection_unique_name")]

    def __str__(self) -> str:
        return self.name


class DistillationTemplate(models.Model):
    """A team's prompt template ({name} placeholders); the built-in ones live in the engine."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="distillation_templates")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    slug = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    system_prompt = models.TextField(blank=True)
    prompt = models.TextField()
    variables = models.JSONField(default=dict, blank=True, help_text="name -> list of values")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["team", "slug"], name="distillationtemplate_unique_slug")]

    def __str__(self) -> str:
        return self.name


class TeacherPrice(models.Model):
    """USD per million tokens of a model (a name or a name prefix); the operator edits them in the
    admin. Seeded with list prices; costs are computed with the longest matching prefix."""

    model = models.CharField(max_length=200, unique=True)
    input_per_mtok = models.DecimalField(max_digits=10, decimal_places=4)
    output_per_mtok = models.DecimalField(max_digits=10, decimal_places=4)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self) -> str:
        return f"{self.model}: ${self.input_per_mtok}/M in, ${self.output_per_mtok}/M out"


class DistillationJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    ENDED = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="distillation_jobs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    mode = models.CharField(max_length=20, default="response")
    # the request as given (teachers without their keys), normalized: what the run reads
    config = models.JSONField(default=dict)
    output_format = models.CharField(max_length=16, default="alpaca")
    num_prompts = models.PositiveIntegerField(default=0)
    num_items = models.PositiveIntegerField(default=0)
    prompts_to_generate = models.PositiveIntegerField(default=0, help_text="prompts the teacher still has to write")
    generated = models.PositiveIntegerField(default=0, help_text="teacher answers stored")
    accepted = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    requests = models.PositiveIntegerField(default=0, help_text="requests sent, refused ones included")
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    cost_usd = models.FloatField(default=0.0)
    cost_known = models.BooleanField(default=True, help_text="false when a model has no price")
    error_message = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    worker = models.CharField(max_length=255, blank=True)
    dataset = models.ForeignKey("datasets_app.Dataset", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="distillation_jobs")
    approved_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def progress(self) -> float:
        """Percent of items with a verdict."""
        total = self.num_items + self.prompts_to_generate
        return round(100.0 * (self.accepted + self.rejected) / total, 1) if total else 0.0


class DistillationTeacher(TeacherFields):
    """A job's own copy of one of its teachers (or its judge): the job keeps working if the saved
    connection changes or goes, and usage and cost are kept per teacher."""

    class Role(models.TextChoices):
        TEACHER = "teacher", "Teacher"
        JUDGE = "judge", "Judge"

    job = models.ForeignKey(DistillationJob, on_delete=models.CASCADE, related_name="teachers")
    position = models.PositiveSmallIntegerField(default=0)
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.TEACHER)
    connection = models.ForeignKey(TeacherConnection, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    requests = models.PositiveIntegerField(default=0)
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    cost_usd = models.FloatField(default=0.0)

    class Meta:
        ordering = ["job", "role", "position"]
        constraints = [models.UniqueConstraint(fields=["job", "role", "position"], name="distillationteacher_unique")]


class DistillationItem(models.Model):
    """One prompt put to one teacher: its calls as they were answered (`calls`, stored at once so a
    resumed run never pays twice), then its verdict and, by hand, a person's review."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected"

    job = models.ForeignKey(DistillationJob, on_delete=models.CASCADE, related_name="items")
    group = models.PositiveIntegerField(help_text="the prompt's number; one item per teacher in multi-teacher 'best'")
    teacher = models.ForeignKey(DistillationTeacher, on_delete=models.CASCADE, related_name="items")
    prompt = models.TextField()
    input = models.TextField(blank=True)
    reference = models.TextField(blank=True, help_text="the source record's answer (augmentation modes)")
    system = models.TextField(blank=True)
    variables = models.JSONField(default=dict, blank=True)
    source_index = models.IntegerField(null=True, blank=True, help_text="the dataset record it came from")
    calls = models.JSONField(default=dict, blank=True, help_text="step -> the stored answer")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    reason = models.CharField(max_length=32, blank=True)
    detail = models.TextField(blank=True)
    score = models.FloatField(null=True, blank=True)
    judge_reason = models.TextField(blank=True)
    record = models.JSONField(default=dict, blank=True, help_text="instruction, input, output, system, reasoning, rejected")
    review = models.CharField(max_length=10, blank=True, help_text="accepted or rejected by a person ('' = the filters' verdict)")
    reviewed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    reviewed_at = models.DateTimeField(null=True, blank=True)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    cost_usd = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["job", "group", "teacher"]
        constraints = [models.UniqueConstraint(fields=["job", "group", "teacher"], name="distillationitem_unique")]
        indexes = [models.Index(fields=["job", "status"], name="distillationitem_job_status")]

    @property
    def final_status(self) -> str:
        return self.review or self.status
