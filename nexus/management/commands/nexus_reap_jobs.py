from __future__ import annotations

from django.core.management.base import BaseCommand

from training_app.services import STALE_AFTER_SECONDS, training_jobs_reap


class Command(BaseCommand):
    help = "Fail running training jobs whose worker went silent (no progress written for --stale-after seconds)."

    def add_arguments(self, parser):
        parser.add_argument("--stale-after", type=int, default=STALE_AFTER_SECONDS)

    def handle(self, *args, stale_after: int, **options):
        reaped = training_jobs_reap(stale_after_s=stale_after)
        self.stdout.write(f"Marked {len(reaped)} job(s) failed: {reaped}" if reaped else "No stale jobs.")
