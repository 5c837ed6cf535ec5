"""Views run in the ASGI server's thread pool: the first tokenizer loads may happen in several
threads at once (the wizard asks for a preview and an estimate together)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, sys, threading
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nexus.settings.test")
import django; django.setup()
from training_app.engine.data import load_tokenizer
errors = []
def load():
    try:
        load_tokenizer(sys.argv[1])
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=load) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(errors or "ok")
sys.exit(1 if errors else 0)
"""


def test_first_tokenizer_loads_in_several_threads_at_once_all_succeed(demo_model_files):
    # a fresh interpreter: transformers not imported yet, as in a just-started server
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(demo_model_files[0])], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-2000:] + out.stderr[-2000:]
