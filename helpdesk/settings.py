"""Threadline settings, read from the environment in one place.

With no environment at all this gives the embedded mode: SQLite under var/, an in-memory
channel layer and a Celery worker + beat inside the server process. `DATABASE_URL` switches to
PostgreSQL, `REDIS_URL` switches the channel layer and the Celery broker to Redis. Every
variable is listed in the README's configuration table.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("THREADLINE_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()
env.read_env(BASE_DIR / ".env")  # optional: a missing file is fine

DEV_SECRET_KEY = "insecure-dev-key-do-not-use-in-production"  # noqa: S105 - refused in production

DJANGO_ENV = env.str("DJANGO_ENV", default="development")
if DJANGO_ENV not in {"development", "test", "production"}:
    raise ImproperlyConfigured(
        f"DJANGO_ENV must be development, test or production, not {DJANGO_ENV!r}"
    )
PRODUCTION = DJANGO_ENV == "production"

SECRET_KEY = env.str("SECRET_KEY", default=DEV_SECRET_KEY)
DEBUG = env.bool("DEBUG", default=not PRODUCTION)
ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS",
    default=[] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]", "testserver"],
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

if PRODUCTION:
    problems = []
    if SECRET_KEY == DEV_SECRET_KEY or len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
        problems.append("SECRET_KEY must be set to a random value of at least 50 characters")
    if DEBUG:
        problems.append("DEBUG must be off")
    if not ALLOWED_HOSTS:
        problems.append("ALLOWED_HOSTS must name the hosts this site answers to")
    if problems:
        raise ImproperlyConfigured("Refusing to start in production: " + "; ".join(problems))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served by us: no CDN
    "channels",
    "helpdesk",
    "routing",
    "conversations",
    "channels_adapters",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "helpdesk.middleware.NulCharacterMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Django's own CSP support arrives in 6.0, which needs Python 3.12.
    "helpdesk.middleware.ContentSecurityPolicyMiddleware",
    "helpdesk.middleware.AgentTimezoneMiddleware",
]

ROOT_URLCONF = "helpdesk.urls"
ASGI_APPLICATION = "helpdesk.asgi.application"
AUTH_USER_MODEL = "helpdesk.User"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/inbox/"
LOGOUT_REDIRECT_URL = "/login/"

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
                "conversations.context_processors.inbox",
            ],
        },
    },
    {  # only asked by name (using="jinja2"): see helpdesk/templating.py
        "BACKEND": "django.template.backends.jinja2.Jinja2",
        "NAME": "jinja2",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": False,
        "OPTIONS": {"environment": "helpdesk.templating.environment"},
    },
]

# --- Database -------------------------------------------------------------------------------

DATABASES = {
    "default": env.db(
        "DATABASE_URL",
        default=f"sqlite:///{VAR_DIR / 'threadline.sqlite3'}",
    )
}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # No parallel plans: the app runs many small queries at once, and a parallel one takes
    # more cores from the others. The inbox's LIMIT queries suffered most: each worker
    # walks ahead on its own (a search of a common word, 24 ms serial, took 205 ms).
    options = DATABASES["default"].setdefault("OPTIONS", {})
    options["options"] = f"-c max_parallel_workers_per_gather=0 {options.get('options', '')}"
    if env.bool("DATABASE_POOL", default=True):
        # Under ASGI each request in flight has a thread of its own, so persistent connections
        # (one per thread) pile up to the server's limit, and none costs a connect per
        # request. A pool shares a few open connections between them.
        options["pool"] = {
            "min_size": 2,
            "max_size": env.int("DATABASE_POOL_SIZE", default=20),
            "timeout": 10,
        }
        DATABASES["default"]["CONN_MAX_AGE"] = 0
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The embedded worker and the web server write from several threads (and a test's
    # server and worker from several processes): WAL lets readers go on during a write,
    # IMMEDIATE takes the write lock up front instead of failing with "database is locked"
    # on upgrade, and the timeout waits for it. Also for a DATABASE_URL naming a file.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        transaction_mode="IMMEDIATE",
        timeout=20,
    )
    DATABASES["default"].setdefault("TEST", {}).setdefault("NAME", VAR_DIR / "test.sqlite3")
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=0))
DATABASE_IS_POSTGRES = DATABASES["default"]["ENGINE"].endswith("postgresql")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channels and Celery ---------------------------------------------------------------------

REDIS_URL = env.str("REDIS_URL", default="")
EMBEDDED_WORKER = env.bool("EMBEDDED_WORKER", default=not REDIS_URL)
# Login throttling counts failures here: shared by every process when there is Redis.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    if REDIS_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

if REDIS_URL:
    # Every request reads its session: from Redis, shared by every process, with the database
    # behind it (also while Redis is down). Without Redis a per-process cache could keep a
    # session another process ended.
    SESSION_ENGINE = "helpdesk.sessions"
    # redis-py's async pool defaults (100 connections, 5 s socket timeout that races BRPOP's
    # 5 s) kill consumers at a few hundred sockets: see DESIGN.md.
    redis_hosts = [{"address": REDIS_URL, "max_connections": 1000, "socket_timeout": None}]
    if env("CHANNEL_LAYER", default="pubsub") == "core":
        layer = {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # The default capacity of 100 drops bursts silently.
            "CONFIG": {"hosts": redis_hosts, "capacity": 2000, "expiry": 60},
        }
    else:
        # Redis pub/sub: one PUBLISH per group, and one subscription per process that hands
        # each message to its sockets, where the core layer keeps a queue per socket in
        # Redis. At 100 chat visitors a second it kept up where the core layer fell seconds
        # behind (bench/chat_latency.py, BENCHMARKS.md). It delivers at most once, and only
        # to those listening: sockets only notify, and clients catch up from the database.
        layer = {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": redis_hosts},
        }
    CHANNEL_LAYERS = {"default": layer}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_REDIRECT_STDOUTS = False
CELERY_TIMEZONE = "UTC"

# A message still queued, or an inbound event still unprocessed, this long after it was
# stored lost its task (broker restart, worker killed): the sweep enqueues it again.
SWEEP_INTERVAL_SECONDS = env.int("SWEEP_INTERVAL_SECONDS", default=60)
SWEEP_STUCK_AFTER_SECONDS = env.int("SWEEP_STUCK_AFTER_SECONDS", default=120)
# Follow-up work (automatic replies, surveys, media fetches, transcripts) due longer than this
# is not enqueued again: after a long outage or a deploy, nothing old reaches customers.
SWEEP_LOOKBACK_HOURS = env.int("SWEEP_LOOKBACK_HOURS", default=24)
# A notification still unread this long is mailed to its agent, if they chose its kind: one
# working in the inbox reads it first and gets no mail (conversations.notification_mail).
NOTIFICATION_EMAIL_DELAY_SECONDS = env.int("NOTIFICATION_EMAIL_DELAY_SECONDS", default=120)
# How long housekeeping (helpdesk.tasks) keeps finished webhook deliveries and notifications.
WEBHOOK_DELIVERIES_KEPT_DAYS = env.int("WEBHOOK_DELIVERIES_KEPT_DAYS", default=30)
NOTIFICATIONS_KEPT_DAYS = env.int("NOTIFICATIONS_KEPT_DAYS", default=90)
MAIL_POLL_INTERVAL_SECONDS = env.int("MAIL_POLL_INTERVAL_SECONDS", default=60)
# The country of a phone number an agent types without its country code ("US", "GB");
# empty: such numbers are refused rather than guessed.
PHONE_REGION = env.str("PHONE_REGION", default="")

# --- Provider channels (SMS, Messenger, WhatsApp) ---------------------------------------------

# The address providers call us at, e.g. https://help.example.com. Twilio signs the URL it
# called, which a proxy in front of us may rewrite: webhook signatures are checked against this.
# `make run` says where it serves (SERVED_AT), for when nothing else does.
PUBLIC_URL = (env.str("PUBLIC_URL", default="") or env.str("SERVED_AT", default="")).rstrip("/")
# Customer media (MMS, Messenger and WhatsApp attachments) larger than this is not fetched.
MEDIA_FETCH_MAX_BYTES = env.int("MEDIA_FETCH_MAX_BYTES", default=25 * 1024 * 1024)
# Server-side fetches refuse loopback, private and link-local addresses; tests allow them.
MEDIA_FETCH_ALLOW_PRIVATE = env.bool("MEDIA_FETCH_ALLOW_PRIVATE", default=False)
PROVIDER_TIMEOUT_SECONDS = env.float("PROVIDER_TIMEOUT_SECONDS", default=15.0)

# --- Web chat ---------------------------------------------------------------------------------

# New widget sockets one client address may open per minute.
WEBCHAT_CONNECTIONS_PER_MINUTE = env.int("WEBCHAT_CONNECTIONS_PER_MINUTE", default=60)

# --- Auth, i18n, static -------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("pt", "Português"), ("fr", "Français"), ("es", "Español")]
LOCALE_PATHS = [BASE_DIR / "locale"]
# What a customer's first message may be recognised as, when their channel does not say which
# language they write (conversations.services.language_guess). Fewer is surer on short texts.
CUSTOMER_LANGUAGES = [
    code.strip()
    for code in env.str(
        "CUSTOMER_LANGUAGES",
        default="en,pt,es,fr,de,it,nl,pl,sv,da,no,fi,cs,ro,hu,tr,ru,uk,el,ar,he,hi,ja,zh,ko,id,vi,th",
    ).split(",")
    if code.strip()
]
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(VAR_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Without collectstatic (development, tests) whitenoise serves straight from the finders.
WHITENOISE_USE_FINDERS = not PRODUCTION
WHITENOISE_AUTOREFRESH = DEBUG

# --- Security -------------------------------------------------------------------------------

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Trust X-Forwarded-Proto only when a proxy we configured sets it.
if env.bool("BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)

# --- Email (outbound notifications; per-inbox SMTP comes with the email channel) --------------

EMAIL_BACKEND = env.str(
    "EMAIL_BACKEND",
    default="django.core.mail.backends.smtp.EmailBackend"
    if "EMAIL_HOST" in env
    else "django.core.mail.backends.filebased.EmailBackend",
)
EMAIL_FILE_PATH = VAR_DIR / "mail"
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Threadline <support@localhost>")

REST_FRAMEWORK = {
    # A personal token (helpdesk.tokens), or the session of our own pages, with its CSRF check.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "helpdesk.tokens.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    # Counted per agent in the default cache (Redis, shared by every process, when there is one).
    "DEFAULT_THROTTLE_CLASSES": ["helpdesk.tokens.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": env.str("API_RATE", default="600/minute")},
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Threadline API",
    "DESCRIPTION": (
        "Conversations and customers, as an agent sees and works on them in the inbox. "
        "Authenticate with `Authorization: Bearer <token>`: a personal token, made on the "
        "inbox's API tokens page."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"celery": {"level": "WARNING"}, "kombu": {"level": "WARNING"}},
}
