from __future__ import annotations

import os

from nexus.settings import env

BASE_DIR = env.BASE_DIR
SECRET_KEY = env.SECRET_KEY
DEBUG = env.DEBUG
ALLOWED_HOSTS = env.ALLOWED_HOSTS

if not env.NEXUS_ALLOW_HUB_DOWNLOADS:
    # Offline by design: nothing is fetched from a model hub unless the operator allows it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "channels",
    "nexus",
    "datasets_app",
    "training_app",
    "adapters_app",
    "deployments_app",
    "evaluation_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "nexus.middleware.RejectNulQueryMiddleware",
]

ROOT_URLCONF = "nexus.urls"
WSGI_APPLICATION = "nexus.wsgi.application"
ASGI_APPLICATION = "nexus.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.parse_database_url(env.DATABASE_URL)}
# A pool of Postgres connections per process (psycopg_pool): a new connection per request cost more
# than the request itself under load. Per-thread persistent connections (CONN_MAX_AGE) leak under
# ASGI, where each request runs in a thread of its own. 0 turns the pool off.
if env.NEXUS_DB_POOL_MAX > 0:
    DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 1, "max_size": env.NEXUS_DB_POOL_MAX, "timeout": 10}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.NEXUS_DATA_DIR / "staticfiles"
# Serve /static/ from the ASGI app itself (local, test, demo); production puts a proxy in front.
NEXUS_SERVE_STATIC = True

NEXUS_DATA_DIR = env.NEXUS_DATA_DIR
NEXUS_MODELS_DIR = env.NEXUS_MODELS_DIR
MEDIA_ROOT = NEXUS_DATA_DIR / "media"
MEDIA_URL = "/media/"  # never served directly: downloads go through team-checked views
NEXUS_CACHE_DIR = env.NEXUS_CACHE_DIR
NEXUS_STORAGE_OPTIONS = env.parse_storage_url(env.NEXUS_STORAGE_URL)
STORAGES = {
    "default": ({"BACKEND": "django.core.files.storage.FileSystemStorage"} if NEXUS_STORAGE_OPTIONS is None else
                {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": NEXUS_STORAGE_OPTIONS}),
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
NEXUS_MAX_UPLOAD_BYTES = env.NEXUS_MAX_UPLOAD_MB * 1024 * 1024
NEXUS_SECRET_KEYS = env.NEXUS_SECRET_KEYS
NEXUS_QUOTA_LIVE_DEPLOYMENTS = env.NEXUS_QUOTA_LIVE_DEPLOYMENTS
NEXUS_QUOTA_ACTIVE_TRAINING_JOBS = env.NEXUS_QUOTA_ACTIVE_TRAINING_JOBS
NEXUS_QUOTA_ACTIVE_EXPORTS = env.NEXUS_QUOTA_ACTIVE_EXPORTS
NEXUS_QUOTA_PROCESSING_DATASETS = env.NEXUS_QUOTA_PROCESSING_DATASETS
NEXUS_QUOTA_ACTIVE_DISTILLATIONS = env.NEXUS_QUOTA_ACTIVE_DISTILLATIONS
NEXUS_TEACHER_ALLOWED_HOSTS = env.NEXUS_TEACHER_ALLOWED_HOSTS
NEXUS_DISTILLATION_MAX_EXAMPLES = env.NEXUS_DISTILLATION_MAX_EXAMPLES
NEXUS_QUOTA_ACTIVE_EVALUATIONS = env.NEXUS_QUOTA_ACTIVE_EVALUATIONS
NEXUS_EVAL_MAX_PROMPTS = env.NEXUS_EVAL_MAX_PROMPTS
NEXUS_JUDGE_TIMEOUT_S = env.NEXUS_JUDGE_TIMEOUT_S
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/finetune/datasets/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "nexus.auth.FastTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["nexus.parsers.StrictJSONParser", "rest_framework.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "DEFAULT_SCHEMA_CLASS": "nexus.schema.NexusAutoSchema",
    "EXCEPTION_HANDLER": "nexus.errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    # ?format= names a dataset format on downloads, not a renderer
    "URL_FORMAT_OVERRIDE": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Nexus fine-tuning API",
    "DESCRIPTION": "Datasets, fine-tuning jobs and adapters. Token auth: `Authorization: Token <key>`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # section 5.3's enum names
    "ENUM_NAME_OVERRIDES": {
        "TrainingStatus": "training_app.models.FineTuningJob.Status",
        "DatasetStatus": "datasets_app.models.Dataset.Status",
        "DatasetFormat": "datasets_app.engine.formats.FORMATS",
        "DatasetFormatOrAuto": "datasets_app.models.Dataset.Format",
        "DatasetFileType": "datasets_app.engine.readers.FILE_TYPES",
        "DistillationStatus": "datasets_app.distillation.models.DistillationJob.Status",
        "TeacherProvider": "datasets_app.distillation.models.Provider",
        "EvaluationRunStatus": "evaluation_app.models.RunStatus",
    },
}

def channel_layer(url: str) -> dict:
    # channels_redis waits in BZPOPMIN for 5 s; redis-py 8 also defaults its socket read timeout to
    # 5 s, so an idle websocket's receive loop died with "Timeout reading from ...". Give the
    # socket more time than the blocking pop.
    return {"BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": url, "socket_timeout": 30, "socket_connect_timeout": 5}]}}


CHANNEL_LAYERS = {"default": channel_layer(env.REDIS_URL)}
# Per-job control channels (stop, pause, resume, checkpoint) that running jobs read every step.
NEXUS_CONTROL_REDIS_URL = env.REDIS_URL

# Celery: the two queues are declared once here; routing lives here, not at call sites.
CELERY_BROKER_URL = env.REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.NEXUS_BROKER_VISIBILITY_TIMEOUT_S,
                                   # a short timeout (tests) is swept every second, not every 100 s
                                   **({"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
                                      if env.NEXUS_BROKER_VISIBILITY_TIMEOUT_S < 60 else {})}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# the reaper every NEXUS_REAP_EVERY_S (run beat once: `celery -A nexus beat`, or -B on one worker)
CELERY_BEAT_SCHEDULE = {"nexus-reap": {"task": "nexus.jobs.reap", "schedule": env.NEXUS_REAP_EVERY_S,
                                       "options": {"queue": "cpu", "expires": env.NEXUS_REAP_EVERY_S}}}
CELERY_BEAT_SCHEDULE_FILENAME = str(env.NEXUS_DATA_DIR / "celerybeat-schedule")

NEXUS_HOST_NAME = env.NEXUS_HOST_NAME
NEXUS_WORKER_HEARTBEAT_S = env.NEXUS_WORKER_HEARTBEAT_S
NEXUS_WORKER_LOST_AFTER_S = env.NEXUS_WORKER_LOST_AFTER_S
NEXUS_HOST_LOST_AFTER_S = env.NEXUS_HOST_LOST_AFTER_S
NEXUS_REAP_EVERY_S = env.NEXUS_REAP_EVERY_S
NEXUS_RESEND_AFTER_S = env.NEXUS_RESEND_AFTER_S
NEXUS_SERVE_BIND = env.NEXUS_SERVE_BIND
NEXUS_SERVE_ADDRESS = env.NEXUS_SERVE_ADDRESS

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
