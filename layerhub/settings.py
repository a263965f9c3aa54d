"""Django settings for layerhub: one module, driven by environment variables.

Every variable has a development default except SECRET_KEY with DEBUG off. A bad value stops
the process with ImproperlyConfigured naming the variable (see layerhub.env).
"""

from __future__ import annotations

import hashlib
import os
import socket
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from layerhub.env import (
    REDIS_SCHEMES,
    env_blobs,
    env_bool,
    env_count,
    env_database,
    env_duration,
    env_list,
    env_mirrors,
    env_name,
    env_path,
    env_proxies,
    env_registries,
    env_reserve,
    env_seconds,
    env_secret_key,
    env_size,
    env_url,
    parse_size,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env_secret_key("SECRET_KEY", debug=DEBUG)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])

DATABASES = {"default": env_database("DATABASE_URL", f"sqlite:///{VAR_DIR / 'layerhub.sqlite3'}")}
_db = DATABASES["default"]
if _db["ENGINE"].endswith("sqlite3") and _db["NAME"] != ":memory:":
    # SQLite creates the file but not its folder; a fresh clone has no var/ yet.
    Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # a file, not memory, so the worker processes the tests start share the test database;
    # one per test session, so two sessions at once never share one
    _db["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
if _db["ENGINE"].endswith("sqlite3"):
    # The web server and the workers write to one SQLite file: WAL lets readers run beside
    # a writer, IMMEDIATE transactions take the write lock up front (no failed upgrades),
    # and a writer waits up to 20 s for another instead of failing at once.
    _db.setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6379/0", schemes=REDIS_SCHEMES)
LAYERHUB_STORE = env_path("LAYERHUB_STORE", VAR_DIR / "store", base=BASE_DIR)


def _deployment_queue(database: dict[str, object], store: Path) -> str:
    """A queue name of this deployment's own: the database and the store it uses, hashed.

    Two checkouts (or a checkout and CI) on one Redis then never take each other's jobs, and
    the web server, the CLI and the workers of one deployment agree without configuration.
    The password is left out, so rotating it does not move the queue.
    """
    if str(database["ENGINE"]).endswith("sqlite3"):
        where = str(Path(str(database["NAME"])).resolve())
    else:
        where = "{ENGINE}://{USER}@{HOST}:{PORT}/{NAME}".format_map(
            {key: database.get(key) or "" for key in ("ENGINE", "USER", "HOST", "PORT", "NAME")}
        )
    digest = hashlib.sha256(f"{where}\n{store}".encode()).hexdigest()[:12]
    return f"layerhub-{digest}"


# The Celery queue this deployment's jobs go to and its workers take from. Processes that
# spell DATABASE_URL differently (localhost vs 127.0.0.1) derive different names: set it
# explicitly where that can happen.
LAYERHUB_QUEUE = env_name("LAYERHUB_QUEUE", _deployment_queue(_db, LAYERHUB_STORE))
# -- Several machines (layerhub.hosts) -------------------------------------------------------
# This process's host: the snapshots it unpacks and the containers it makes are recorded as
# this host's, and its worker also takes the jobs sent to <LAYERHUB_QUEUE>.host.<LAYERHUB_HOST>
# (jobs that need this host's disk: a container's commit, say) and answers the calls to this host
# (a container's exec, files, diff, creation and removal).
LAYERHUB_HOST = env_name("LAYERHUB_HOST", socket.gethostname().split(".")[0] or "localhost")
# where this host keeps its snapshots (the per-host cache of unpacked layers); None:
# <LAYERHUB_STORE>/snapshots. Same file system as LAYERHUB_STORE (unpacks rename from its tmp/).
LAYERHUB_SNAPSHOTS = (
    env_path("LAYERHUB_SNAPSHOTS", VAR_DIR, base=BASE_DIR)
    if "LAYERHUB_SNAPSHOTS" in os.environ
    else None
)
# a host whose worker has not stamped its heartbeat for this long is unavailable: its
# containers' pages say so, and jobs queued for it fail with that message
LAYERHUB_HOST_GONE_AFTER = env_seconds("LAYERHUB_HOST_GONE_AFTER", 60.0, maximum=86400)
# how long a page or API request waits for a container's host to read or write a file or run
# a command (a short call: layerhub.hosts.calls); an exec's own timeout is added to it
LAYERHUB_HOST_CALL_TIMEOUT = env_seconds("LAYERHUB_HOST_CALL_TIMEOUT", 30.0, maximum=3600)
# this host's snapshot cache is kept under this many bytes (50G, 500GiB; 0: no limit): past
# it, the snapshots used least recently that can be unpacked again from their blobs are
# evicted (layerhub.images.snapshot_cache); what a container here, a running job or a use in
# the last LAYERHUB_SNAPSHOT_CACHE_IDLE holds stays
LAYERHUB_SNAPSHOT_CACHE_MAX = env_size("LAYERHUB_SNAPSHOT_CACHE_MAX", 0)
if 0 < LAYERHUB_SNAPSHOT_CACHE_MAX < 1 << 20:
    raise ImproperlyConfigured(
        f"LAYERHUB_SNAPSHOT_CACHE_MAX={os.environ.get('LAYERHUB_SNAPSHOT_CACHE_MAX')!r} is "
        f"{LAYERHUB_SNAPSHOT_CACHE_MAX} bytes, less than a layer: give a unit (50G, 500GiB), "
        "or 0 for no limit"
    )
# a snapshot used more recently than this is never evicted (a container being created, a page
# or a scan reading it); a duration with its unit (45s, 10m, 2h)
LAYERHUB_SNAPSHOT_CACHE_IDLE = env_duration(
    "LAYERHUB_SNAPSHOT_CACHE_IDLE", timedelta(minutes=10), maximum=timedelta(days=30)
)
# how many calls each worker answers at once, beside its job slots (its Celery concurrency), so
# a host busy with pulls, commits or a garbage collection still answers a page at once
LAYERHUB_HOST_CALL_THREADS = env_count("LAYERHUB_HOST_CALL_THREADS", 4, maximum=64)

# A worker stamps the row of the job it runs every HEARTBEAT seconds; a running job whose
# stamp is older than DEAD_AFTER has lost its worker (killed, machine gone) and is re-queued
# (or failed after Job.max_attempts runs) by whichever worker or CLI notices first.
LAYERHUB_JOB_HEARTBEAT = env_seconds("LAYERHUB_JOB_HEARTBEAT", 10.0, maximum=600)
LAYERHUB_JOB_DEAD_AFTER = env_seconds("LAYERHUB_JOB_DEAD_AFTER", 90.0, maximum=86400)
if LAYERHUB_JOB_DEAD_AFTER < 2 * LAYERHUB_JOB_HEARTBEAT:
    raise ImproperlyConfigured(
        f"LAYERHUB_JOB_DEAD_AFTER={LAYERHUB_JOB_DEAD_AFTER:g} must be at least twice "
        f"LAYERHUB_JOB_HEARTBEAT={LAYERHUB_JOB_HEARTBEAT:g}, or live jobs look dead"
    )
if LAYERHUB_HOST_GONE_AFTER < 2 * LAYERHUB_JOB_HEARTBEAT:
    raise ImproperlyConfigured(
        f"LAYERHUB_HOST_GONE_AFTER={LAYERHUB_HOST_GONE_AFTER:g} must be at least twice "
        f"LAYERHUB_JOB_HEARTBEAT={LAYERHUB_JOB_HEARTBEAT:g}, or live hosts look gone"
    )
# Archives uploaded through the browser to be imported wait here (outside the store, whose
# tmp/ is swept when a worker starts) until their import job ends; bigger ones are refused.
LAYERHUB_UPLOAD_DIR = env_path("LAYERHUB_UPLOAD_DIR", VAR_DIR / "uploads", base=BASE_DIR)
try:
    LAYERHUB_UPLOAD_MAX_BYTES = parse_size(os.environ.get("LAYERHUB_UPLOAD_MAX", "8GiB"))
except ValueError:
    raise ImproperlyConfigured(
        f"LAYERHUB_UPLOAD_MAX={os.environ.get('LAYERHUB_UPLOAD_MAX')!r} is not a size: "
        "use bytes (1073741824) or a unit (500M, 8GiB)"
    ) from None
# Archives saved for download from the browser are written here (jobs:download serves
# only files under it).
LAYERHUB_EXPORT_DIR = env_path("LAYERHUB_EXPORT_DIR", VAR_DIR / "exports", base=BASE_DIR)
# How long a connection to Redis may take before a command says the broker is down.
LAYERHUB_BROKER_TIMEOUT = env_seconds("LAYERHUB_BROKER_TIMEOUT", 3.0, maximum=600)
# A message a worker took but never acknowledged (the worker was killed before it claimed
# the job) goes back to the queue after this long. Jobs that were claimed do not wait for
# it: the heartbeat above notices them sooner. A job still running past it is delivered
# again and dropped by Job.claim, which sees the live heartbeat.
LAYERHUB_BROKER_VISIBILITY_TIMEOUT = env_seconds(
    "LAYERHUB_BROKER_VISIBILITY_TIMEOUT", 600.0, maximum=86400
)
# transient registry failures (no answer, 429, 5xx, a cut download) are retried this many
# times, waiting BACKOFF, 2*BACKOFF, 4*BACKOFF... seconds in between
LAYERHUB_REGISTRY_RETRIES = 4
LAYERHUB_REGISTRY_BACKOFF = 0.5

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles, so runserver serves static files through whitenoise as production does.
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    # Swagger UI and Redoc served from our own static files, never a CDN
    "drf_spectacular_sidecar",
    "layerhub.core",
    "layerhub.accounts",
    "layerhub.images",
    "layerhub.jobs",
    "layerhub.containers",
    "layerhub.hosts",
    "layerhub.dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # every page needs a signed-in user; views that do not (login, health check) say so
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # an error a user caused (a LayerhubError) is a page with its message, never a traceback
    "layerhub.core.middleware.UserErrorMiddleware",
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:home"
LOGOUT_REDIRECT_URL = "login"

ROOT_URLCONF = "layerhub.urls"
WSGI_APPLICATION = "layerhub.wsgi.application"
ASGI_APPLICATION = "layerhub.asgi.application"

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

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# where `manage.py collectstatic` gathers the files that whitenoise serves with DEBUG off
STATIC_ROOT = env_path("STATIC_ROOT", BASE_DIR / "staticfiles", base=BASE_DIR)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed names need `collectstatic` first, so only production (DEBUG off) uses them.
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Celery reads every CELERY_* setting here (workers/celery.py, namespace CELERY).
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = LAYERHUB_QUEUE
CELERY_BROKER_CONNECTION_TIMEOUT = LAYERHUB_BROKER_TIMEOUT
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": LAYERHUB_BROKER_VISIBILITY_TIMEOUT,
    "socket_connect_timeout": LAYERHUB_BROKER_TIMEOUT,
}
# Queuing a job with Redis down fails within about a second, with a message (not a hang).
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.25,
    "interval_max": 0.5,
}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# Outcomes and progress live on Job rows, so no result backend is kept.
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_TIMEZONE = TIME_ZONE
# A job's message is acknowledged when the task ends, so one whose worker was killed is
# delivered again (and Job.claim lets the new run pick up what the dead one verified).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1

# -- registry client timings (each an environment variable, in seconds) -----------------------
# connecting, and each read of a small exchange
LAYERHUB_REGISTRY_TIMEOUT = env_seconds("LAYERHUB_REGISTRY_TIMEOUT", 30.0)
# a whole small exchange (a manifest, a token, an error body) must end within this
LAYERHUB_REGISTRY_DEADLINE = env_seconds("LAYERHUB_REGISTRY_DEADLINE", 30.0)
# a blob download or upload fails when no byte moves for this long
LAYERHUB_REGISTRY_STALL_TIMEOUT = env_seconds("LAYERHUB_REGISTRY_STALL_TIMEOUT", 60.0)

# -- registries in the wild: trust, insecure registries, mirrors, proxies ----------------------
# a directory per registry host, as Docker's certs.d: <host[:port]>/ca.crt (extra CAs),
# client.cert and client.key (mutual TLS); the OS trust store is used besides
LAYERHUB_CERTS_DIR = env_path("LAYERHUB_CERTS_DIR", VAR_DIR / "certs.d", base=BASE_DIR)
# registries (host[:port]) or CIDR ranges that may be reached over plain HTTP, or over TLS
# with a certificate that fails verification, as Docker's insecure-registries
LAYERHUB_INSECURE_REGISTRIES = env_registries("LAYERHUB_INSECURE_REGISTRIES")
# mirrors tried before a registry for pulls: docker.io=https://mirror.local,...;ghcr.io=...
LAYERHUB_REGISTRY_MIRRORS = env_mirrors("LAYERHUB_REGISTRY_MIRRORS")
# HTTPS_PROXY, HTTP_PROXY, NO_PROXY (loopback registries never go through a proxy)
LAYERHUB_PROXIES = env_proxies()

# -- The layer store's free space ---------------------------------------------------------------
# Unpacks and blob writes stop (StoreFull) before the store's file system has less free than
# this: a size (2GiB, 500M, bytes) or a share of the disk (5%). Default: the larger of 1 GiB
# and 5% of the file system.
LAYERHUB_STORE_RESERVE = env_reserve("LAYERHUB_STORE_RESERVE")
# where blobs live: the store's blobs/ ("local") or an S3 bucket every host shares
LAYERHUB_BLOBS = env_blobs("LAYERHUB_BLOBS")

# -- Garbage collection (layerhub.images.gc) ------------------------------------------------------
# Each a duration with its unit (45s, 90m, 12h, 30d); "off" where it says so.
# tmp/ leftovers, container layers no container row names and uploads no import job holds are
# removed only once they are this old (what a live process holds is never removed)
LAYERHUB_GC_GRACE = env_duration("LAYERHUB_GC_GRACE", timedelta(hours=1))
# dedup links files of at least this size (smaller ones save less than their inode's worth)
LAYERHUB_DEDUP_MIN_SIZE = env_size("LAYERHUB_DEDUP_MIN_SIZE", 1)
# untagged images added longer ago than this are deleted as `rmi` deletes them; off by default:
# an image pulled by digest is untagged on purpose
LAYERHUB_GC_KEEP_UNTAGGED = env_duration(
    "LAYERHUB_GC_KEEP_UNTAGGED", None, allow_off=True, minimum=timedelta(minutes=1)
)
# ended jobs (and their leases) are deleted this long after they ended
LAYERHUB_GC_KEEP_JOBS = env_duration(
    "LAYERHUB_GC_KEEP_JOBS", timedelta(days=30), allow_off=True, minimum=timedelta(minutes=1)
)
# archives saved for download (LAYERHUB_EXPORT_DIR) are deleted this long after they were written
LAYERHUB_GC_KEEP_EXPORTS = env_duration(
    "LAYERHUB_GC_KEEP_EXPORTS", timedelta(days=7), allow_off=True, minimum=timedelta(minutes=1)
)
# multipart uploads of blobs left pending in the object store (an S3 client killed in the
# middle of one leaves its parts, never an object) are aborted this long after they began,
# unless a running job has leased their blob; off: left to a bucket lifecycle rule
LAYERHUB_GC_KEEP_MULTIPART = env_duration(
    "LAYERHUB_GC_KEEP_MULTIPART", timedelta(days=1), allow_off=True, minimum=timedelta(hours=1)
)
# how often Celery beat queues a garbage collection; off: only when someone asks
LAYERHUB_GC_EVERY = env_duration(
    "LAYERHUB_GC_EVERY", timedelta(days=1), allow_off=True, minimum=timedelta(minutes=1)
)
# Celery beat (one per deployment: `celery -A workers beat`, or `-B` on one worker, as
# `make dev` runs it) queues the task below on this deployment's queue; its worker then queues
# a gc job unless one is queued or running already.
CELERY_BEAT_SCHEDULE = (
    {
        "layerhub-gc": {
            "task": "layerhub.store_gc_scheduled",
            "schedule": LAYERHUB_GC_EVERY.total_seconds(),
        }
    }
    if LAYERHUB_GC_EVERY is not None
    else {}
)

# -- The REST API (layerhub/api, under /api/v1/) ------------------------------------------------
# Automation sends a token (`Authorization: Bearer <token>` or `Token <token>`); the browser its
# session, with CSRF on. Every endpoint needs one of them; every answer is JSON, errors in one
# shape (layerhub.api.errors).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "layerhub.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["layerhub.api.permissions.Restricted"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["layerhub.api.parsers.BoundedJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "layerhub.api.pagination.Pagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "layerhub.api.errors.exception_handler",
    "PAGE_SIZE": 50,
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "UNICODE_JSON": True,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "layerhub API",
    "DESCRIPTION": (
        "Images, layers, containers and jobs of a layerhub catalog. Authenticate with "
        "`Authorization: Bearer <token>` (or `Token <token>`), or a signed-in session."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # no call to swagger.io's online validator either
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    # choice sets sharing a field name ("kind", "state") get names of their own
    "ENUM_NAME_OVERRIDES": {
        "JobKindEnum": "layerhub.jobs.models.Job.Kind",
        "JobStateEnum": "layerhub.jobs.models.Job.State",
        "TokenKindEnum": "layerhub.accounts.models.Token.Kind",
        "ContainerStateEnum": "layerhub.containers.models.Container.State",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "layerhub.api.schema.document_errors",
    ],
}
