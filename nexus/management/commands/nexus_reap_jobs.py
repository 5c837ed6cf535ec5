from __future__ import annotations

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = ("One round of the job kit's reaper (beat runs it every NEXUS_REAP_EVERY_S): work held by a worker "
            "that is gone (silent for NEXUS_WORKER_LOST_AFTER_S, stopped, or untouched for --stale-after seconds) "
            "is resumed, queued again or failed as its kind decides; waiting work the broker lost is sent again; "
            "each host with live servers is asked to check them.")

    def add_arguments(self, parser):
        parser.add_argument("--stale-after", type=int, default=None,
                            help="also count held work untouched this long as orphaned (default: each kind's own)")

    def handle(self, *args, stale_after: int | None, **options):
        from nexus.jobs.reaper import reap

        self.stdout.write(reap(stale_after_s=stale_after).summary())
