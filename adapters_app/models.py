from __future__ import annotations

from django.db import models

from nexus.models import BaseModel, Team


class LoRAAdapter(models.Model):
    """A trained adapter in PEFT's format (loadable with PeftModel.from_pretrained)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="adapters")
    name = models.CharField(max_length=200)
    version = models.PositiveIntegerField(default=1)
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="adapters")
    job = models.OneToOneField(
        "training_app.FineTuningJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="adapter"
    )
    path = models.CharField(max_length=500, help_text="Folder holding adapter_config.json and adapter_model.safetensors")
    size_bytes = models.BigIntegerField(default=0)
    lora_config = models.JSONField(default=dict, blank=True)
    final_loss = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["team", "name", "version"], name="adapter_unique_version")]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"
