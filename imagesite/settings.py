"""imagesite settings: one file, driven by environment variables.

Every default is the embedded set-up (SQLite, django-q2's ORM broker, local private media, the shipped
demo model), so a fresh clone runs with nothing set. DESIGN.md lists the variables.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url

from .env import env_bool, env_float, env_gpu_list, env_int, env_list, env_str, generation_worker_count

BASE_DIR = Path(__file__).resolve().parent.parent

# Idle OpenMP threads sleep instead of spinning: spinning threads of one process (a worker, the
# trainer, a test) starve the others on a small CPU box (20 demo steps: 30 s spinning, 1.8 s not).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "dev-only-insecure-key-change-me-in-production")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "axes",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_q",
    "imagesite.apps.ImagesiteConfig",
    "generation.apps.GenerationConfig",
    "training.apps.TrainingConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as axes asks: it turns a locked-out login into the lock-out page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "imagesite.urls"
WSGI_APPLICATION = "imagesite.wsgi.application"

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
                "imagesite.invites.signup_context",  # the login page and header say who may sign up
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------
SQLITE_PATH = Path(env_str("IMAGESITE_SQLITE_PATH", str(BASE_DIR / "db.sqlite3")))
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{SQLITE_PATH}"), conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web and worker share the file: WAL lets readers run beside the one writer, IMMEDIATE
    # transactions take the write lock up front (no deadlock-on-upgrade), and the busy timeout
    # makes a writer wait instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # Tests run a real qcluster subprocess, which must see the test database: keep it in a file
    # (one per test run, so parallel runs never share it).
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "build" / f"test-db-{os.getpid()}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "imagesite.login_throttle.LoginThrottleBackend",  # first: refuses locked-out logins (axes)
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "generation-new"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Files ----------------------------------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# Private files (images, photos, checkpoints) are never served from a public URL: only
# ownership-checked views read them. MEDIA_URL is deliberately not routed anywhere.
MEDIA_ROOT = Path(env_str("IMAGESITE_MEDIA_ROOT", str(BASE_DIR / "media")))
MEDIA_URL = "/private-media-is-not-served/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
# Behind nginx, set to the internal location prefix (e.g. "/protected/") to hand file bodies to
# nginx with X-Accel-Redirect after the ownership check.
IMAGESITE_X_ACCEL_REDIRECT = env_str("IMAGESITE_X_ACCEL_REDIRECT", "")

# --- Models and jobs ------------------------------------------------------------------------------
IMAGESITE_MODEL = env_str("IMAGESITE_MODEL", str(BASE_DIR / "generation" / "demo_model"))
IMAGESITE_VRAM = env_str("IMAGESITE_VRAM", "auto")
# More base models: every diffusers folder and .safetensors/.ckpt file in this folder is offered
# beside IMAGESITE_MODEL (the default); staff can also list models in the admin.
IMAGESITE_MODELS_DIR = env_str("IMAGESITE_MODELS_DIR", str(BASE_DIR / "models"))
# Where a single-file checkpoint is converted once into a diffusers folder (training needs one).
IMAGESITE_MODEL_CACHE = env_str("IMAGESITE_MODEL_CACHE", str(BASE_DIR / "build" / "model-cache"))
# torch threads for a worker rendering on the CPU: half the cores, leaving room for the web server
# and the training worker (on 2 cores, 1 thread rendered 20 demo steps in 1.2 s, 2 threads in 30 s
# when anything else wanted a core).
IMAGESITE_CPU_THREADS = env_int("IMAGESITE_CPU_THREADS", max(1, (os.cpu_count() or 2) // 2))
# Images one pipeline call may render for several compatible queued jobs (1: no batching); bench/batching.py.
IMAGESITE_MAX_BATCH = env_int("IMAGESITE_MAX_BATCH", 4)
# A running job whose heartbeat is older than this is presumed dead (worker killed) and reaped.
IMAGESITE_STALE_AFTER_S = env_int("IMAGESITE_STALE_AFTER_S", 90)
# /metrics (Prometheus): staff sessions, or a scraper sending "Authorization: Bearer <this>".
IMAGESITE_METRICS_TOKEN = env_str("IMAGESITE_METRICS_TOKEN", "")
IMAGESITE_MAX_ATTEMPTS = env_int("IMAGESITE_MAX_ATTEMPTS", 2)
IMAGESITE_HEARTBEAT_S = env_int("IMAGESITE_HEARTBEAT_S", 10)
# A data export's archive (imagesite/export.py) can be downloaded for this many hours, then is deleted.
IMAGESITE_EXPORT_HOURS = env_int("IMAGESITE_EXPORT_HOURS", 24)
IMAGESITE_ORPHAN_GRACE_S = env_int("IMAGESITE_ORPHAN_GRACE_S", 3600)  # imagesite.orphans: files younger than this are never swept
# Live previews while a job renders: at most one every IMAGESITE_PREVIEW_S seconds (0: off).
IMAGESITE_PREVIEW_S = env_float("IMAGESITE_PREVIEW_S", 0.5)
# A folder with TAESD weights for sharper previews: taesd/ (SD 1.x/2.x) and/or taesdxl/ (SDXL), in
# diffusers' AutoencoderTiny layout. Empty: the linear latent→RGB approximation.
IMAGESITE_TAESD = env_str("IMAGESITE_TAESD", "")

# --- GPUs (generation/gpus.py): one worker per GPU, each claims its own inside the worker ------------------
# The CUDA device numbers workers may use (default: all), and one kept for the training cluster.
IMAGESITE_GPUS = env_gpu_list("IMAGESITE_GPUS")
IMAGESITE_TRAINING_GPU: int | None = int(os.environ["IMAGESITE_TRAINING_GPU"]) if os.environ.get("IMAGESITE_TRAINING_GPU", "").strip() else None
# Each worker holds a lock file here for the GPU it claimed (one folder per cluster role).
IMAGESITE_GPU_LOCK_DIR = env_str("IMAGESITE_GPU_LOCK_DIR", str(BASE_DIR / "build" / "gpu-locks"))


GENERATION_TIMEOUT_S = env_int("IMAGESITE_GENERATION_TIMEOUT_S", 1800)
TRAINING_TIMEOUT_S = env_int("IMAGESITE_TRAINING_TIMEOUT_S", 6 * 3600)

Q_CLUSTER = {
    "name": "imagesite",
    # One worker per GPU, each pinned to its own (generation/gpus.py); one GPU is the default. With N
    # GPUs set IMAGESITE_WORKERS=N or "auto". Add machines to scale out.
    "workers": generation_worker_count(env_str("IMAGESITE_WORKERS", "1"), IMAGESITE_GPUS, IMAGESITE_TRAINING_GPU),
    "timeout": GENERATION_TIMEOUT_S,
    # retry must exceed timeout, or a slow task is handed out twice.
    "retry": GENERATION_TIMEOUT_S + 300,
    "max_attempts": IMAGESITE_MAX_ATTEMPTS,
    # How often an idle worker looks for a job on the ORM broker (Redis blocks, no polling).
    "poll": env_float("IMAGESITE_QUEUE_POLL_S", 0.1),
    "catch_up": False,
    "ack_failures": True,
    "save_limit": 250,
    "recycle": 1000,
    "label": "Task queue",
    "ALT_CLUSTERS": {
        # Training runs are long: their own cluster (Q_CLUSTER_NAME=training manage.py qcluster)
        # so they never hold up generations.
        "training": {
            "timeout": TRAINING_TIMEOUT_S,
            "retry": TRAINING_TIMEOUT_S + 600,
            "workers": 1,
        },
    },
}
REDIS_URL = os.environ.get("REDIS_URL")
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}  # shared: reset throttle
else:
    Q_CLUSTER["orm"] = "default"
    # The ORM broker, woken by SQLite's commit counter instead of waiting out the poll (imagesite/broker.py).
    Q_CLUSTER["broker_class"] = "imagesite.broker.WakefulORM"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "imagesite": {"handlers": ["console"], "level": "INFO"},
        "generation": {"handlers": ["console"], "level": "INFO"},
        "training": {"handlers": ["console"], "level": "INFO"},
    },
}

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)

# A single .ckpt/.safetensors is built with its family's shipped configs (generation/<family>_config:
# configs and CLIP tokenizers, no weights; nothing is downloaded). Empty: those. Set it only for a model
# with non-standard sizes, to a local diffusers folder holding that model's configs.
IMAGESITE_MODEL_CONFIG = env_str("IMAGESITE_MODEL_CONFIG", "")

# In development whitenoise serves static files straight from the finders (no collectstatic).
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# --- REST API (api/): tokens, limits, webhooks, OpenAPI ---------------------------------------------
INSTALLED_APPS += ["rest_framework", "drf_spectacular", "drf_spectacular_sidecar", "api.apps.ApiConfig"]
# Django's limits on a request body, stated here because the API's errors and docs name them: 2.5 MB
# of non-file data, 1,000 form fields, 100 files (photo uploads are capped far lower by training).
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1_000
DATA_UPLOAD_MAX_NUMBER_FILES = 100
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.authentication.ApiTokenAuthentication",
        # The browser's session, with DRF's CSRF check on unsafe methods.
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.Pagination",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "api.parsers.JSONParser",  # DRF's, with too-deep nesting a 400 rather than a 500
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "imagesite API",
    "DESCRIPTION": (
        "Generate images, train subjects and fetch results from scripts. Authenticate with "
        "`Authorization: Bearer <token>` (make a token on the account page) or the browser session. "
        "Errors always have the shape `{status, code, detail, errors}`, where `errors` maps field "
        "names to messages."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",  # served from our static files: the docs work offline
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"JobStatusEnum": "imagesite.jobs.JobStatus.choices"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "api.schema.add_error_responses",
    ],
}
# Site-wide defaults; staff override them per user in the admin (imagesite.UserLimits).
IMAGESITE_API_LIMITS = {
    "generations_per_hour": env_int("IMAGESITE_LIMIT_GENERATIONS_PER_HOUR", 120),
    "uploads_per_hour": env_int("IMAGESITE_LIMIT_UPLOADS_PER_HOUR", 200),
    "trainings_per_day": env_int("IMAGESITE_LIMIT_TRAININGS_PER_DAY", 10),
    "max_queued_jobs": env_int("IMAGESITE_LIMIT_MAX_QUEUED_JOBS", 10),
    "gpu_seconds_per_day": env_int("IMAGESITE_LIMIT_GPU_SECONDS_PER_DAY", 0),  # 0: no cap
}
# Webhooks never go to loopback, private or link-local addresses unless this is on (tests turn it on
# for a receiver on 127.0.0.1): otherwise a user could make the server call into its own network.
IMAGESITE_WEBHOOK_ALLOW_PRIVATE = env_bool("IMAGESITE_WEBHOOK_ALLOW_PRIVATE", False)
IMAGESITE_WEBHOOK_TIMEOUT_S = env_int("IMAGESITE_WEBHOOK_TIMEOUT_S", 10)
# Seconds to wait before each retry; one attempt more than retries in all.
IMAGESITE_WEBHOOK_BACKOFF_S = [int(s) for s in env_list("IMAGESITE_WEBHOOK_BACKOFF_S", ["30", "120", "600", "3600", "14400"])]

# --- Login throttling (django-axes; our rules in imagesite/login_throttle.py) ---------------------------
# Either criterion locks: one account guessed at from many addresses, or one address guessing at many
# accounts. The lock-out ends by itself after the cool-off; each attempt during it starts it again.
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_FAILURE_LIMIT = env_int("IMAGESITE_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("IMAGESITE_LOGIN_COOLOFF_MINUTES", 15))
AXES_RESET_ON_SUCCESS = True
AXES_HANDLER = "imagesite.login_throttle.LoginThrottleHandler"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_DISABLE_ACCESS_LOG = True  # throttling only: no row per successful login
# Behind reverse proxies that each append the client's address to X-Forwarded-For, how many there
# are (nginx in front: 1). 0 uses REMOTE_ADDR, which a client cannot forge.
IMAGESITE_PROXY_COUNT = env_int("IMAGESITE_PROXY_COUNT", 0)
AXES_CLIENT_IP_CALLABLE = "imagesite.login_throttle.client_ip"

# --- HTTPS (off by default: the embedded set-up serves plain HTTP on 127.0.0.1) ---------------------
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", False)
if env_bool("DJANGO_BEHIND_TLS_PROXY", False):
    # Only behind a proxy that sets this header itself on every request (and drops the client's).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Sign-up and mail (imagesite/invites.py, password_reset.py). Sign-up: open | invite | closed; open in the
# embedded set-up (DEBUG, 127.0.0.1: `make run`, then Sign up), else invite: strangers must not get the GPU.
IMAGESITE_SIGNUP = env_str("IMAGESITE_SIGNUP", "open" if DEBUG else "invite").strip().lower()
IMAGESITE_SIGNUP_CONTACT = env_str("IMAGESITE_SIGNUP_CONTACT", "")  # whom to ask for an invite (login page)
EMAIL_HOST = env_str("EMAIL_HOST", "")  # unset: mails are printed on the web process's console
EMAIL_BACKEND = env_str("IMAGESITE_EMAIL_BACKEND", f"django.core.mail.backends.{'smtp' if EMAIL_HOST else 'console'}.EmailBackend")
EMAIL_PORT, EMAIL_HOST_USER, EMAIL_HOST_PASSWORD = env_int("EMAIL_PORT", 587), env_str("EMAIL_HOST_USER", ""), env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)  # implicit TLS (465); else STARTTLS (587) unless EMAIL_USE_TLS=false
EMAIL_USE_TLS, EMAIL_TIMEOUT = env_bool("EMAIL_USE_TLS", not EMAIL_USE_SSL), 30  # s: a silent server must not hang a request
DEFAULT_FROM_EMAIL = SERVER_EMAIL = env_str("DEFAULT_FROM_EMAIL", "imagesite <noreply@localhost>")
IMAGESITE_PASSWORD_RESET_PER_HOUR = env_int("IMAGESITE_PASSWORD_RESET_PER_HOUR", 3)  # per email, per address (cache)
