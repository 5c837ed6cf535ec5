from __future__ import annotations

from nexus.settings import env
from nexus.settings.base import *  # noqa: F401,F403

DEBUG = False
SECRET_KEY = env.SECRET_KEY or "nexus-test-key"
# Tests keep their artifacts apart from the demo's, but share the provisioned models.
NEXUS_DATA_DIR = env.NEXUS_DATA_DIR / "test"
MEDIA_ROOT = NEXUS_DATA_DIR / "media"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_BROKER_URL = env.TEST_REDIS_URL
CHANNEL_LAYERS = {"default": channel_layer(env.TEST_REDIS_URL)}  # noqa: F405
NEXUS_CONTROL_REDIS_URL = env.TEST_REDIS_URL
NEXUS_CACHE_DIR = env.NEXUS_CACHE_DIR if "NEXUS_CACHE_DIR" in env.os.environ else NEXUS_DATA_DIR / "cache"
