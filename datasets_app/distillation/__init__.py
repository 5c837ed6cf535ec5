"""Distillation: training data from a teacher model (see docs/architecture.md, "Distillation").

engine/ is Django-free (teachers through the official SDKs, the rate limiter, quality filters,
the judge, templates, augmentation modes, prices, the concurrent run); the rest wraps it."""
