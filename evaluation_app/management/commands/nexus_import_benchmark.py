"""Install a benchmark that is not packaged on PyPI from its published files (checked row by row)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from evaluation_app.engine.suites import import_suite, suite_get, suites
from nexus.storage import is_remote, stage_up


class Command(BaseCommand):
    help = ("Import a benchmark's published files into NEXUS_DATA_DIR/benchmarks/NAME (benchmarks/NAME in the "
            "object store when artifacts live in one), replacing an earlier "
            "import only when every row is valid. Names: "
            + ", ".join(suite.name for suite in suites() if suite.imported) + ".")

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("files", nargs="+", type=Path, metavar="FILE")

    def handle(self, *args, name: str, files: list[Path], **options):
        try:
            suite = suite_get(name)
            if is_remote():  # every worker host reads it from the object store
                with tempfile.TemporaryDirectory() as tmp:
                    source = import_suite(name, files, Path(tmp))
                    stage_up(Path(tmp) / "benchmarks" / suite.name, f"benchmarks/{suite.name}")
            else:
                source = import_suite(name, files, Path(settings.NEXUS_DATA_DIR))
        except ValueError as exc:  # BenchmarkImportError included
            raise CommandError(str(exc)) from exc
        described = ", ".join(f"{f['name']} (sha256 {f['sha256']}, {f['rows']} rows)" for f in source["files"])
        self.stdout.write(f"Imported {source['rows']} items of {suite.label} from {described}")
