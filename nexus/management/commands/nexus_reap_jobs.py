from __future__ import annotations

from django.core.management.base import BaseCommand

from training_app.services import STALE_AFTER_SECONDS, training_jobs_reap, training_jobs_requeue


class Command(BaseCommand):
    help = ("Fail running training jobs whose worker went silent (nothing written for --stale-after seconds), "
            "fail deployments whose llama.cpp server died, and send queued work again (duplicates are harmless: "
            "a job or export is claimed once).")

    def add_arguments(self, parser):
        parser.add_argument("--stale-after", type=int, default=STALE_AFTER_SECONDS)

    def handle(self, *args, stale_after: int, **options):
        from adapters_app.exports import exports_requeue
        from datasets_app.services import datasets_requeue
        from deployments_app.services import deployments_reap

        reaped = training_jobs_reap(stale_after_s=stale_after)
        self.stdout.write(f"Marked {len(reaped)} job(s) failed: {reaped}" if reaped else "No stale jobs.")
        dead = deployments_reap()
        self.stdout.write(f"Marked {len(dead)} deployment(s) failed: {dead}" if dead else "No dead deployments.")
        self.stdout.write(f"Sent again: training jobs {training_jobs_requeue()}, datasets {datasets_requeue()}, "
                          f"exports {exports_requeue()}")
