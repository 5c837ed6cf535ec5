from __future__ import annotations

from django.conf import settings
from django.db import models

from adapters_app.models import AdapterExport, LoRAAdapter
from nexus.models import BaseModel, Team


class Deployment(models.Model):
    """A managed llama.cpp server (or two, for an A/B split) behind one OpenAI-compatible endpoint.

    Each arm is one llama.cpp server process serving the base GGUF, base GGUF + adapter GGUF, or a
    merged GGUF export. Requests to the endpoint are routed to an arm by its traffic percentage."""

    class Status(models.TextChoices):
        STARTING = "starting", "Starting"
        RUNNING = "running", "Running"
        STOPPING = "stopping", "Stopping"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"

    LIVE = (Status.STARTING, Status.RUNNING, Status.STOPPING)

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=200)
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="deployments")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.STARTING)
    # before `settings` below: that field's name shadows django.conf.settings in this class body
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    settings = models.JSONField(default=dict, blank=True, help_text="llama.cpp server options: n_ctx, threads, ...")
    error = models.TextField(blank=True)
    # the machine whose worker started its servers: checks, stops and log reads go to that host's queue
    host = models.CharField(max_length=255, blank=True)
    worker = models.CharField(max_length=255, blank=True, help_text="the worker that is starting it")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    @property
    def is_live(self) -> bool:
        return self.status in self.LIVE


class DeploymentArm(models.Model):
    """One llama.cpp server process of a deployment and its share of the traffic."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="arms")
    label = models.CharField(max_length=16, help_text="A or B")
    adapter = models.ForeignKey(LoRAAdapter, null=True, blank=True, on_delete=models.PROTECT, related_name="arms")
    export = models.ForeignKey(AdapterExport, null=True, blank=True, on_delete=models.PROTECT, related_name="arms",
                               help_text="A merged GGUF export served alone")
    weight = models.PositiveSmallIntegerField(default=100, help_text="Percent of requests")
    model_path = models.CharField(max_length=1000, blank=True)
    lora_path = models.CharField(max_length=1000, blank=True)
    host = models.CharField(max_length=200, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    log_path = models.CharField(max_length=1000, blank=True)
    # the server's own API key (a new one each start), encrypted; only Nexus's proxy sends it
    api_key_encrypted = models.TextField(blank=True, editable=False)
    healthy_at = models.DateTimeField(null=True, blank=True)
    # written on its host by the last check: the web process never reads the file
    log_tail = models.TextField(blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment", "label"]
        constraints = [models.UniqueConstraint(fields=["deployment", "label"], name="arm_unique_label")]

    def __str__(self) -> str:
        return f"{self.deployment.name}/{self.label}"

    @property
    def api_key(self) -> str:
        from nexus.secrets import secret_decrypt

        return secret_decrypt(self.api_key_encrypted)

    @property
    def serves(self) -> str:
        if self.export_id:
            return f"merged {self.export.quantization} GGUF of {self.export.adapter}"
        return f"{self.deployment.base_model.name} + {self.adapter}" if self.adapter_id else self.deployment.base_model.name


class DeploymentRequest(models.Model):
    """One request through a deployment's endpoint: which arm served it, and how fast."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="requests")
    arm = models.ForeignKey(DeploymentArm, on_delete=models.CASCADE, related_name="requests")
    endpoint = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(default=200)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
