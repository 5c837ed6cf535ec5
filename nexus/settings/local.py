from __future__ import annotations

from nexus.settings.base import *  # noqa: F401,F403
from nexus.settings.base import SECRET_KEY as _SECRET_KEY

DEBUG = True
SECRET_KEY = _SECRET_KEY or "nexus-local-development-key-not-for-production"
