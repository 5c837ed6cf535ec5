from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from nexus.settings.base import *  # noqa: F401,F403
from nexus.settings.base import SECRET_KEY

if not SECRET_KEY.strip():
    raise ImproperlyConfigured("SECRET_KEY must be set in the environment for production (not blank)")
if not NEXUS_SECRET_KEYS:  # noqa: F405
    raise ImproperlyConfigured("NEXUS_SECRET_KEYS must be set in the environment for production: Fernet keys for "
                               "secrets at rest, apart from SECRET_KEY")
DEBUG = False
NEXUS_SERVE_STATIC = False
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
