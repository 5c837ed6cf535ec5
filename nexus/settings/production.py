from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from nexus.settings import env
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
# HTTPS only: plain HTTP is redirected, browsers are told to use HTTPS (HSTS). Behind a proxy that
# terminates TLS, NEXUS_BEHIND_TLS_PROXY=1 makes Django trust its X-Forwarded-Proto header.
SECURE_SSL_REDIRECT = env.NEXUS_HTTPS_ONLY
SECURE_HSTS_SECONDS = env.NEXUS_HSTS_SECONDS if env.NEXUS_HTTPS_ONLY else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env.NEXUS_HSTS_PRELOAD  # NEXUS_HSTS_PRELOAD=0 before a domain may ever serve plain HTTP
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain HTTP
if env.NEXUS_BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
