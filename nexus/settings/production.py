from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from nexus.settings.base import *  # noqa: F401,F403
from nexus.settings.base import SECRET_KEY

if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set in the environment for production")
DEBUG = False
NEXUS_SERVE_STATIC = False
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
