from __future__ import annotations

from django.conf import settings
from django.db import models


class Team(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=200, unique=True)
    # A personal team is created for every user; API calls default to it.
    personal_owner = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="personal_team",
    )
    # Chatting with a deployment spends the team's compute: members may; viewers only when allowed.
    viewers_use_deployments = models.BooleanField(
        default=False, help_text="Let the team's viewers send requests to its deployments (chat and the OpenAI endpoint)")
    # Rating comparisons is a judgement call a team may want from more people than its members.
    viewers_rate_evaluations = models.BooleanField(
        default=False, help_text="Let the team's viewers rate comparisons (everything else they may only read)")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"
        VIEWER = "viewer", "Viewer"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="membership_unique_team_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"

    @property
    def can_write(self) -> bool:
        return self.role in {self.Role.OWNER, self.Role.MEMBER}


class BaseModel(models.Model):
    """A model that can be fine-tuned (HF folder) and/or served by llama.cpp (GGUF file).

    The operator's models are global; a merged adapter becomes a model of its team only.
    """

    name = models.CharField(max_length=200, unique=True)
    # None: the operator's catalog, visible to everyone. A team's own models (merged adapters) are
    # visible to that team only.
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="own_models")
    architecture = models.CharField(max_length=100, blank=True)
    parameter_count = models.BigIntegerField(default=0)
    context_length = models.PositiveIntegerField(default=0)
    has_chat_template = models.BooleanField(default=False)
    hf_path = models.CharField(max_length=1000, blank=True, help_text="Local HF folder used for training")
    gguf_path = models.CharField(max_length=1000, blank=True, help_text="GGUF file for llama.cpp")
    source = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def trainable(self) -> bool:
        return bool(self.hf_path)

    @property
    def has_gguf(self) -> bool:
        return bool(self.gguf_path)


class JobEvent(models.Model):
    """An ordered event of any job (log line, metric, status change).

    The database is the source of truth for progress; websockets only push copies.
    `seq` is dense per (job_kind, job_id) so a reconnecting client resumes with `after=<seq>`.
    """

    class Kind(models.TextChoices):
        DATASET = "dataset", "Dataset processing"
        TRAINING = "training", "Training"
        EXPORT = "export", "Merge or GGUF export"
        DEPLOYMENT = "deployment", "Deployment"
        DISTILLATION = "distillation", "Distillation"
        COMPARISON = "comparison", "Comparison"
        JUDGE = "judge", "LLM judge"
        PERFORMANCE = "performance", "Speed test"
        BENCHMARK = "benchmark", "Benchmark"

    class Type(models.TextChoices):
        LOG = "log", "Log"
        METRIC = "metric", "Metric"
        STATUS = "status", "Status"

    class Level(models.TextChoices):
        DEBUG = "debug", "Debug"
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"

    job_kind = models.CharField(max_length=32, choices=Kind.choices)
    job_id = models.BigIntegerField()
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=16, choices=Type.choices, default=Type.LOG)
    level = models.CharField(max_length=16, choices=Level.choices, default=Level.INFO)
    message = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job_kind", "job_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["job_kind", "job_id", "seq"], name="jobevent_unique_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.job_kind}-{self.job_id} #{self.seq} {self.type}: {self.message[:60]}"

    def as_message(self) -> dict:
        return {
            "seq": self.seq,
            "type": self.type,
            "level": self.level,
            "message": self.message,
            "data": self.data,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


class WorkerHeartbeat(models.Model):
    """A Celery worker's last sign of life (see nexus/jobs/workers.py): the reaper treats the rows a
    silent or stopped worker holds as orphaned."""

    name = models.CharField(max_length=255, unique=True, help_text="the worker's node name (celery@host)")
    host = models.CharField(max_length=255, db_index=True)
    queues = models.CharField(max_length=1000, blank=True)
    pid = models.IntegerField(default=0)
    seen_at = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
