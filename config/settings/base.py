"""Settings shared by every environment. Everything that differs between deployments comes from
the environment (see the table in README.md); secrets have no default outside development."""

import os
from pathlib import Path

import dj_database_url
from celery.schedules import crontab  # noqa: F401  (re-exported for settings overrides)
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


SECRET_KEY = env("OPSLOOP_SECRET_KEY", "development-only-not-secret-0123456789abcdefghijklmnopqrstuvwxyz")
DEBUG = env_bool("OPSLOOP_DEBUG", False)
ALLOWED_HOSTS = env_list("OPSLOOP_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("OPSLOOP_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "django_celery_beat",
    "import_export",
    "axes",
    # Our apps, from the bottom layer up.
    "access",
    "tracking",
    "indicators",
    "profiles",
    "crm",
    "predictions",
    "coupons",
    "materials",
    "campaigns",
    "journeys",
    "community",
    "planning",
    "monitoring",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The page's language: the staff member's choice (language cookie) or else the browser's.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After authentication: a signed-in staff member's own saved language wins over the browser's.
    "access.language.StaffLanguageMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so it sees the views' exceptions first: API clients get JSON 500s with an error id.
    "config.errors.JsonErrorMiddleware",
    # After authentication: refuses the admin login of a locked-out user or address.
    "axes.middleware.AxesMiddleware",
    # Times on the admin's pages in the reader's time zone (their browser's).
    "config.formatting.OperatorTimeZoneMiddleware",
]

# Admin login attempts (django-axes, https://django-axes.readthedocs.io/): after
# OPSLOOP_LOGIN_FAILURE_LIMIT failures for one user name, or from one address, further attempts
# are refused (HTTP 429) for OPSLOOP_LOGIN_COOLOFF_MINUTES. The attempts are kept in the database
# (admin: *Axes*), where a superuser can also lift a lockout early.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(env("OPSLOOP_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = int(env("OPSLOOP_LOGIN_COOLOFF_MINUTES", "15")) / 60  # hours
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each on its own: per user and per address
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "access.throttling.client_ip"
# Behind a reverse proxy every request comes from the proxy's address: name the request header the
# proxy sets to the client's address (`X-Real-IP`), and only a proxy that overwrites it.
OPSLOOP_CLIENT_IP_HEADER = env("OPSLOOP_CLIENT_IP_HEADER", "")

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "config" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
            # percent, money, p_value, local_time, ... in every template (config/formatting.py).
            "builtins": ["config.formatting"],
        },
    },
]

# https://github.com/jazzband/dj-database-url : one URL names server, database and credentials.
DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", "postgres://opsloop@127.0.0.1:54329/opsloop"),
        conn_max_age=int(env("OPSLOOP_DB_CONN_MAX_AGE", "60")),
        # A reused connection is checked (`SELECT 1`, one round trip) at the start of each request.
        # Without the check a connection broken since its last request (a database restart)
        # fails that one request, then is replaced; hot API servers may prefer that trade.
        conn_health_checks=env_bool("OPSLOOP_DB_CONN_HEALTH_CHECKS", True),
    )
}
# Reads of dashboards and analyses may go to a PostgreSQL streaming replica (config/replica.py,
# docs/deploy.md): its URL, in the same form as DATABASE_URL. Without it there is no replica.
OPSLOOP_REPLICA_DATABASE_URL = env("OPSLOOP_REPLICA_DATABASE_URL", "")
if OPSLOOP_REPLICA_DATABASE_URL:
    DATABASES["replica"] = dj_database_url.parse(
        OPSLOOP_REPLICA_DATABASE_URL,
        conn_max_age=int(env("OPSLOOP_DB_CONN_MAX_AGE", "60")),
        conn_health_checks=env_bool("OPSLOOP_DB_CONN_HEALTH_CHECKS", True),
    )
    # A replica that does not answer within this many seconds is passed over for the primary
    # (libpq counts at least 2). A host that vanishes once connected is noticed by the TCP
    # keepalives and tcp_user_timeout (unacknowledged data), and a query that runs away is ended
    # by statement_timeout, so neither hangs a page or the check for the kernel's minutes.
    DATABASES["replica"].setdefault("OPTIONS", {}).update(
        connect_timeout=int(env("OPSLOOP_REPLICA_CONNECT_TIMEOUT", "2")),
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        tcp_user_timeout=int(float(env("OPSLOOP_REPLICA_TCP_USER_TIMEOUT", "10")) * 1000),
        options="-c statement_timeout={}".format(int(float(env("OPSLOOP_REPLICA_STATEMENT_TIMEOUT", "60")) * 1000)),
    )
    # The tests read the test database through it and never create one for it.
    # https://docs.djangoproject.com/en/5.2/topics/testing/advanced/#testing-primary-replica-configurations
    DATABASES["replica"]["TEST"] = {"MIRROR": "default"}
DATABASE_ROUTERS = ["config.replica.ReplicaRouter"]
# Models the ORM may read from the replica inside `reading_from_replica()`: the events and the
# tables rolled up from them, which only background steps write. What an operator edits (funnels,
# goals, alert recipients, watches, anomaly rules), the money paths, logins and keys always read
# the primary, so an edit shows at once.
OPSLOOP_REPLICA_MODELS = env_list(
    "OPSLOOP_REPLICA_MODELS",
    "tracking.event,indicators.activityday,indicators.activityperson,indicators.activityfirstevent,"
    "indicators.activitygap,indicators.activitytail,indicators.dailyindicator,indicators.retentioncell,"
    "indicators.searchday,indicators.searchmonth",
)
# More WAL than this behind the primary, the replica is passed over. 16 MB (one WAL segment) was
# about 5 s of the ingestion bench's writing here; config/replica.py says why not seconds.
OPSLOOP_REPLICA_MAX_LAG_MB = float(env("OPSLOOP_REPLICA_MAX_LAG_MB", "16"))
OPSLOOP_REPLICA_CHECK_SECONDS = float(env("OPSLOOP_REPLICA_CHECK_SECONDS", "5"))
OPSLOOP_REPLICA_RETRY_SECONDS = float(env("OPSLOOP_REPLICA_RETRY_SECONDS", "30"))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:63799/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "opsloop",
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
# The admin speaks English and Simplified Chinese; each app ships its catalogue in
# <app>/locale/zh_Hans/, the project's own templates and strings theirs in config/locale/.
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "config" / "locale"]
TIME_ZONE = env("OPSLOOP_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "config" / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LOGIN_URL = "admin:login"

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "access.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Deny by default: every view names the scope it needs.
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "config.api.Pagination",
    # DRF's defaults, with a JSON parser that answers over-deep nesting with a 400.
    "DEFAULT_PARSER_CLASSES": [
        "config.api.JsonParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.errors.exception_handler",
    "COERCE_DECIMAL_TO_STRING": True,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Requests a minute per API key or staff member, shared by all processes through Redis.
    "DEFAULT_THROTTLE_CLASSES": ["access.throttling.PerCallerRateThrottle"],
}
# Far above what the benchmarks reach (about 16 event batches a second over HTTP, some hundreds of
# claims a second), so only a runaway or stolen key meets them. Rates: N/s, N/m, N/h or N/d.
OPSLOOP_API_RATE = env("OPSLOOP_API_RATE", "60000/m")
OPSLOOP_API_INGEST_RATE = env("OPSLOOP_API_INGEST_RATE", "60000/m")

SPECTACULAR_SETTINGS = {
    "TITLE": "opsloop API",
    "DESCRIPTION": "Tracking, profiles, coupons and campaigns for the product and automation.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Two models' `status` fields: each enum keeps a name of its own (campaigns' the one it had).
    "ENUM_NAME_OVERRIDES": {
        "StatusEnum": "campaigns.models.CampaignStatus",
        "ContributionScoreRunStatusEnum": "community.models.ScoreRun.Status",
        "PhaseKindEnum": "planning.models.PhaseKind",
    },
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "config.api.document_errors"],
}

# --- Celery ---------------------------------------------------------------------------------
# https://docs.celeryq.dev/en/stable/userguide/configuration.html
CELERY_BROKER_URL = env("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_QUEUES = (Queue("default"), Queue("deliveries"), Queue("analytics"))
CELERY_TASK_ROUTES = {
    "campaigns.tasks.deliver_*": {"queue": "deliveries"},
    "*.tasks.recompute_*": {"queue": "analytics"},
    "*.tasks.rollup_*": {"queue": "analytics"},
    "tracking.tasks.ship_events": {"queue": "analytics"},
    "tracking.tasks.delete_expired_events": {"queue": "analytics"},
}
# A delivery is acknowledged only after it ran, and a worker takes one message at a time, so a
# killed worker loses nothing and holds nothing back from the others.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": int(env("OPSLOOP_VISIBILITY_TIMEOUT", "3600"))}
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# The root logger is Django's LOGGING (a file with OPSLOOP_LOG_FILE), in the worker as everywhere.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- opsloop --------------------------------------------------------------------------------
OPSLOOP_PUBLIC_URL = env("OPSLOOP_PUBLIC_URL", f"http://127.0.0.1:{env('OPSLOOP_PORT', '8000')}")
# ISO 4217 code of the shop's money, as pages, charts and CSV headers write amounts.
OPSLOOP_CURRENCY = env("OPSLOOP_CURRENCY", "CNY")
OPSLOOP_DEFAULT_PHONE_REGION = env("OPSLOOP_DEFAULT_PHONE_REGION", "CN")
OPSLOOP_PUSH_GATEWAY_URL = env("OPSLOOP_PUSH_GATEWAY_URL", "")
OPSLOOP_SMS_GATEWAY_URL = env("OPSLOOP_SMS_GATEWAY_URL", "")
OPSLOOP_WEBHOOK_URL = env("OPSLOOP_WEBHOOK_URL", "")
OPSLOOP_GATEWAY_TOKEN = env("OPSLOOP_GATEWAY_TOKEN", "")
# Hosts a channel's gateway token may be sent to, besides those of the three URLs above. A
# channel whose token would go elsewhere (its URL changed in the admin) posts nothing.
OPSLOOP_GATEWAY_ALLOWED_HOSTS = env_list("OPSLOOP_GATEWAY_ALLOWED_HOSTS")
OPSLOOP_LINK_SIGNING_KEY = env("OPSLOOP_LINK_SIGNING_KEY", SECRET_KEY)
# How long a process trusts an API key it checked (no query per request); a key revoked
# elsewhere stops working within this many seconds. 0: look every key up on every request.
OPSLOOP_API_KEY_CACHE_SECONDS = float(env("OPSLOOP_API_KEY_CACHE_SECONDS", "5"))
# How far ahead of the server clock an event's timestamp may be.
OPSLOOP_EVENTS_MAX_FUTURE_SECONDS = int(env("OPSLOOP_EVENTS_MAX_FUTURE_SECONDS", "600"))
# Where the indicator pages read events (tracking.events_store): `postgres` (the rollups) or
# `clickhouse`, at a server (`http://user:password@host:8123/database`, clickhouse-connect) or in
# the embedded engine (`chdb://<directory>`); with ClickHouse, stored events are shipped there.
OPSLOOP_EVENTS_STORE = env("OPSLOOP_EVENTS_STORE", "postgres")
OPSLOOP_CLICKHOUSE_URL = env("OPSLOOP_CLICKHOUSE_URL", f"chdb://{BASE_DIR / '.run' / 'chdb'}")
# Events per shipping batch (10,000 to 100,000: ClickHouse wants few large inserts).
OPSLOOP_SHIPPING_BATCH_EVENTS = int(env("OPSLOOP_SHIPPING_BATCH_EVENTS", "50000"))
# A shipping run writes ClickHouse's finished rows of the days closed since the last; rows a late
# event made stale are written again at most this often (pages compute those days meanwhile).
OPSLOOP_CLICKHOUSE_REFINISH_MINUTES = int(env("OPSLOOP_CLICKHOUSE_REFINISH_MINUTES", "15"))
# Days touched by inserts this recent when a run reads them stay untrusted until the next run: an
# insert longer than this, running beside a finishing run, could otherwise go unnoticed.
OPSLOOP_CLICKHOUSE_TOUCHED_GRACE_SECONDS = int(env("OPSLOOP_CLICKHOUSE_TOUCHED_GRACE_SECONDS", "300"))
# Raw events older than this many days are deleted from PostgreSQL by the nightly task (only those
# already shipped, when ClickHouse is on); unset: kept for ever.
# Retention runs only with ClickHouse on and its history loaded (manage.py ship_history), and a
# system check refuses a window shorter than the PostgreSQL readers of raw events need
# (tracking.checks).
OPSLOOP_EVENTS_RETENTION_DAYS = int(env("OPSLOOP_EVENTS_RETENTION_DAYS", "0")) or None
# The longest look-back a segment's event condition may have (`within_days`).
OPSLOOP_SEGMENT_MAX_LOOKBACK_DAYS = int(env("OPSLOOP_SEGMENT_MAX_LOOKBACK_DAYS", "3650"))
# Event names retention never deletes (orders: their history feeds RFM and the predictions).
OPSLOOP_EVENTS_KEPT_NAMES = tuple(
    name.strip() for name in env("OPSLOOP_EVENTS_KEPT_NAMES", "order_paid,order_refunded").split(",") if name.strip()
)
OPSLOOP_ROLLUP_WORK_MEM = env("OPSLOOP_ROLLUP_WORK_MEM", "256MB")  # PostgreSQL work_mem of a rollup run
# Largest accepted POST /api/v1/events body: 1000 events with full 32 KiB properties fit.
OPSLOOP_EVENTS_MAX_BODY_BYTES = int(env("OPSLOOP_EVENTS_MAX_BODY_BYTES", str(40 * 1024 * 1024)))
# The Segment tracking API (docs/segment.md). Its spec's batch limit is 500 KB; RudderStack's
# libraries batch up to 4 MB, so a team on them may raise it (or lower their upload size).
OPSLOOP_SEGMENT_MAX_BATCH_BYTES = int(env("OPSLOOP_SEGMENT_MAX_BATCH_BYTES", str(500 * 1024)))
# The host (and path) analytics.js is told to send to; by default the one its settings came from.
OPSLOOP_SEGMENT_API_HOST = env("OPSLOOP_SEGMENT_API_HOST", "")
# analytics.js as `scripts/ensure-segment-sdks.sh` installs it, served under /ingest/segment/.
OPSLOOP_ANALYTICS_NEXT_DIR = env(
    "OPSLOOP_ANALYTICS_NEXT_DIR",
    str(BASE_DIR / ".node" / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"),
)

# How long a claim or a redemption waits for a locked rule or coupon before it answers 503 BUSY.
OPSLOOP_MONEY_LOCK_TIMEOUT_MS = int(env("OPSLOOP_MONEY_LOCK_TIMEOUT_MS", "2000"))

# Customer value: default RFM window of new scoring schemes; memory for the nightly recompute.
OPSLOOP_RFM_WINDOW_DAYS = int(env("OPSLOOP_RFM_WINDOW_DAYS", "365"))
OPSLOOP_CRM_RECOMPUTE_WORK_MEM = env("OPSLOOP_CRM_RECOMPUTE_WORK_MEM", "256MB")
# Predictions: threads the churn model trains with. Gradient boosting spins a thread per core
# (OpenMP); on a worker whose cores are busy with other tasks that is many times slower than one.
OPSLOOP_PREDICTION_THREADS = int(env("OPSLOOP_PREDICTION_THREADS", "1"))
# Delivery: batch size and HTTP threads per task, when a delivery counts as stuck and is re-queued
# by the sweeper, how many ignored messages make a person fatigued and for how long.
OPSLOOP_DELIVERY_BATCH_SIZE = int(env("OPSLOOP_DELIVERY_BATCH_SIZE", "200"))
OPSLOOP_DELIVERY_THREADS = int(env("OPSLOOP_DELIVERY_THREADS", "8"))
OPSLOOP_DELIVERY_STALE_SECONDS = int(env("OPSLOOP_DELIVERY_STALE_SECONDS", "300"))
OPSLOOP_DELIVERY_REQUEUE_AFTER_SECONDS = int(env("OPSLOOP_DELIVERY_REQUEUE_AFTER_SECONDS", "900"))
OPSLOOP_SWEEP_LIMIT = int(env("OPSLOOP_SWEEP_LIMIT", "500000"))
OPSLOOP_FATIGUE_AFTER_IGNORED = int(env("OPSLOOP_FATIGUE_AFTER_IGNORED", "3"))
OPSLOOP_FATIGUE_COOLDOWN_DAYS = int(env("OPSLOOP_FATIGUE_COOLDOWN_DAYS", "7"))
# Events are often ingested late: a sent campaign is completed this long after its attribution
# window has closed, so events timestamped inside the window but ingested after it still count.
OPSLOOP_ATTRIBUTION_GRACE_MINUTES = int(env("OPSLOOP_ATTRIBUTION_GRACE_MINUTES", "60"))
OPSLOOP_DEFAULT_USER_TIMEZONE = env("OPSLOOP_DEFAULT_USER_TIMEZONE", "UTC")
# Health page and `manage.py opsloop_health`: a campaign running this long without a phase is
# stuck at its start; a value recompute queued or running this long has lost its worker, and a
# code batch pending this long its task message.
OPSLOOP_HEALTH_CAMPAIGN_START_MINUTES = int(env("OPSLOOP_HEALTH_CAMPAIGN_START_MINUTES", "10"))
OPSLOOP_HEALTH_RECOMPUTE_STUCK_MINUTES = int(env("OPSLOOP_HEALTH_RECOMPUTE_STUCK_MINUTES", "180"))
OPSLOOP_HEALTH_BATCH_PENDING_MINUTES = int(env("OPSLOOP_HEALTH_BATCH_PENDING_MINUTES", "30"))
# A sent campaign still not completed this long after its window and grace closed: the close is stuck.
OPSLOOP_HEALTH_ATTRIBUTION_CLOSE_MINUTES = int(env("OPSLOOP_HEALTH_ATTRIBUTION_CLOSE_MINUTES", "60"))

EMAIL_BACKEND = env("OPSLOOP_EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env("OPSLOOP_EMAIL_HOST", "localhost")
EMAIL_PORT = int(env("OPSLOOP_EMAIL_PORT", "25"))
EMAIL_HOST_USER = env("OPSLOOP_EMAIL_USER", "")
EMAIL_HOST_PASSWORD = env("OPSLOOP_EMAIL_PASSWORD", "")
EMAIL_USE_TLS = env_bool("OPSLOOP_EMAIL_USE_TLS", False)
# A hung SMTP server must not hold a batch (and its lease) for ever.
EMAIL_TIMEOUT = float(env("OPSLOOP_EMAIL_TIMEOUT", "30"))
DEFAULT_FROM_EMAIL = env("OPSLOOP_FROM_EMAIL", "opsloop@localhost")
# Anomaly alerts (indicators.anomalies): e-mailed to these addresses and posted as JSON to this
# URL; either left empty is not used (docs/goals.md).
OPSLOOP_ALERT_EMAILS = env_list("OPSLOOP_ALERT_EMAILS")
OPSLOOP_ALERT_WEBHOOK_URL = env("OPSLOOP_ALERT_WEBHOOK_URL", "")
OPSLOOP_ALERT_WEBHOOK_TIMEOUT = float(env("OPSLOOP_ALERT_WEBHOOK_TIMEOUT", "10"))

LOG_FORMAT = env("OPSLOOP_LOG_FORMAT", "text")  # "json" in production
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env("OPSLOOP_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
    },
}
# A process whose stderr goes nowhere (the detached worker and beat of scripts/processes.sh) logs
# to this file instead: every logger, Celery's task failures with their tracebacks included.
# WatchedFileHandler reopens the file when logrotate has moved it:
# https://docs.python.org/3/library/logging.handlers.html#watchedfilehandler
LOG_FILE = env("OPSLOOP_LOG_FILE", "")
if LOG_FILE:
    LOGGING["handlers"]["file"] = {
        "class": "logging.handlers.WatchedFileHandler",
        "filename": LOG_FILE,
        "formatter": LOG_FORMAT,
    }
    LOGGING["root"]["handlers"] = ["file"]
