"""Shared fixtures. Personas: alice is an admin, bob an agent of the Support team, charlie an
agent of the Billing team (an outsider to Support's conversations)."""

import os
import sys
import threading
from pathlib import Path

import pytest
from celery.signals import task_postrun
from django.conf import settings
from django.db import connection

from conversations import services
from conversations.models import Channel, Inbox
from helpdesk.models import User
from routing.models import Team, TeamMembership

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"


@pytest.fixture
def support(db):
    return Team.objects.create(name="Support", slug="support")


@pytest.fixture
def billing(db):
    return Team.objects.create(name="Billing", slug="billing")


def person(name: str, team=None, *, admin=False) -> User:
    """A user who signs in with PASSWORD."""
    create = User.objects.create_superuser if admin else User.objects.create_user
    user = create(email=f"{name.lower()}@example.com", password=PASSWORD, display_name=name)
    if team:
        TeamMembership.objects.create(team=team, user=user)
    return user


@pytest.fixture
def alice(db):
    return person("Alice", admin=True)


@pytest.fixture
def bob(support):
    return person("Bob", support)


@pytest.fixture
def charlie(billing):
    return person("Charlie", billing)


@pytest.fixture
def dana(support):
    """Bob's teammate in Support."""
    return person("Dana", support)


@pytest.fixture
def mail_inbox(support):
    """An email inbox without a mail server (see email_inbox for one that sends)."""
    return Inbox.objects.create(
        name="Support email",
        kind=Channel.EMAIL,
        address="support@acme.example",
        default_team=support,
    )


def signed_in(browser, base, user, **context):
    """A new browser context signed in as `user` on the server at `base`, on the inbox.
    `context`: more of Playwright's context options (a time zone, a locale...)."""
    page = browser.new_page(viewport={"width": 1280, "height": 800}, **context)
    page.goto(f"{base}/login/")
    page.fill("#id_username", user.email)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/inbox/")
    return page


@pytest.fixture
def tasks_run(django_capture_on_commit_callbacks):
    """Tasks enqueued after commit run at once, in this test: what a worker would do."""
    from helpdesk.celery import app

    app.conf.task_always_eager = True
    yield lambda: django_capture_on_commit_callbacks(execute=True)
    app.conf.task_always_eager = False


@pytest.fixture
def twilio():
    """Twilio's API on a loopback port (tests/providers.py)."""
    from tests.providers import FakeTwilio

    fake = FakeTwilio()
    yield fake
    fake.close()


@pytest.fixture
def sms_inbox(support, twilio):
    return Inbox.objects.create(
        name="Support SMS",
        kind=Channel.SMS,
        address="+15005550006",
        default_team=support,
        settings={"account_sid": twilio.account_sid, "api_base_url": twilio.url},
        credentials={"auth_token": twilio.auth_token},
    )


@pytest.fixture
def chat_inbox(support):
    return Inbox.objects.create(name="Website chat", kind=Channel.WEBCHAT, default_team=support)


@pytest.fixture
def api_inbox(support):
    return Inbox.objects.create(name="Shop", kind=Channel.API, default_team=support)


@pytest.fixture
def billing_inbox(billing):
    return Inbox.objects.create(name="Billing API", kind=Channel.API, default_team=billing)


def receive(inbox, text="Hello, I need help", address="visitor-1", **kwargs):
    """A customer message arriving through the real receive service."""
    kind = kwargs.pop("channel", inbox.kind)
    return services.message_receive(
        inbox=inbox,
        inbound=services.InboundMessage(channel=kind, address=address, text=text, **kwargs),
    )


def webhook_path(inbox) -> str:
    return f"/channels/{inbox.kind}/{inbox.pk}/webhook"


def process_pending():
    """What the worker does with stored inbound events; returns them as processed."""
    from channels_adapters.delivery import inbound_event_process
    from channels_adapters.models import InboundEvent

    pending = list(InboundEvent.objects.filter(status="pending").order_by("pk"))
    for event in pending:
        inbound_event_process(event.pk)
    return [InboundEvent.objects.get(pk=event.pk) for event in pending]


def deliver_webhook(client, graph, inbox, body):
    """Meta calls the inbox's webhook with `body`; the stored events are then processed."""
    response = graph.post_webhook(client, webhook_path(inbox), body)
    assert response.status_code == 200
    assert response.content == b"EVENT_RECEIVED"
    return process_pending()


def status_of(message) -> str:
    from conversations.models import Message

    return Message.objects.values_list("status", flat=True).get(pk=message.pk)


@pytest.fixture
def graph():
    """A loopback stand-in for Meta's Graph API (tests/providers.py)."""
    from tests.providers import FakeGraph

    fake = FakeGraph()
    yield fake
    fake.close()


def database_url() -> str:
    """A URL for the test database, so a subprocess (a real Celery worker) uses it too."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def subprocess_env(**extra) -> dict:
    env = {**os.environ, "DATABASE_URL": database_url(), **extra}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session", autouse=True)
def _test_database_left(django_db_setup, django_db_blocker):
    """Threads that ran synchronous code for async tests (asgiref's) keep their PostgreSQL
    connections open after the last test, and the test database could then not be dropped
    ("being accessed by other users"). Ended first: this teardown runs before
    django_db_setup's."""
    yield
    with django_db_blocker.unblock():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


@pytest.fixture(autouse=True)
def _media_root(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test gets its own channel layer: channels-redis keeps locks and connections bound
    to the event loop that made them, and every async test runs on a new loop. A consumer left
    waiting when one test's loop closed must not hold a lock the next test needs."""
    from channels.layers import channel_layers

    yield
    channel_layers.backends.clear()


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Rate-limit counters (logins, chat visitors) start at zero in every test, and nothing
    compiled or read from another test's tables is kept (routing.models.TableCache and
    ShortCache)."""
    from django.core.cache import cache

    from helpdesk import ratelimit
    from routing.models import ShortCache, TableCache

    cache.clear()
    ratelimit._local.clear()  # what a process counts on its own while Redis is down
    TableCache.clear_all()
    ShortCache.clear_all()


@pytest.fixture
def redis_url():
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (the PostgreSQL + Redis leg of .ci/run sets it)")
    return settings.REDIS_URL


_task_finished = threading.Condition()


@task_postrun.connect
def _wake_waiters(**kwargs):
    with _task_finished:
        _task_finished.notify_all()


def wait_for(predicate, *, timeout=20.0, what="the condition"):
    """Wait until `predicate()` holds, for work done by this process's own Celery worker (the
    embedded one): re-checked each time the worker finishes a task, never on a timer. The
    timeout only bounds a test that would otherwise hang."""
    import time

    deadline = time.monotonic() + timeout
    with _task_finished:
        while not (result := predicate()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            _task_finished.wait(remaining)
    return result


def listen(*groups):
    """Subscribe to real-time groups; returns next_event(timeout) -> the next notification.
    For waiting on work done in another process: it announces what it committed there.
    One event loop subscribes and runs every wait: the pub/sub layer delivers to the loop that
    subscribed (between waits, Redis's socket holds what arrives)."""
    import asyncio

    from channels.layers import get_channel_layer

    layer, loop = get_channel_layer(), asyncio.new_event_loop()
    channel = loop.run_until_complete(layer.new_channel("test."))
    for group in groups:
        loop.run_until_complete(layer.group_add(group, channel))

    def next_event(timeout=30):
        return loop.run_until_complete(asyncio.wait_for(layer.receive(channel), timeout))

    return next_event


@pytest.fixture
def purge_broker():
    """Drop tasks left in the broker by earlier tests, so a worker sees only this test's."""
    from helpdesk.celery import app

    app.control.purge()
    return app.control.purge


@pytest.fixture
def embedded_worker(transactional_db, purge_broker):
    """The in-process Celery worker and beat that `make run` uses, on this test's database."""
    from helpdesk.celery import embedded as worker

    worker.start()
    assert worker.alive  # start() returns once its threads run
    yield worker
    worker.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpRecorder:
    """An aiosmtpd handler: keeps what it accepts; `answers` queues replies to give instead of
    accepting (e.g. "451 4.3.0 Try again later"), one per DATA command."""

    def __init__(self):
        self.received = []
        self.answers: list[str] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        if self.answers:
            return self.answers.pop(0)
        self.received.append(envelope)
        return "250 2.0.0 OK"

    def hold_first(self) -> tuple[threading.Event, threading.Event]:
        """Sit on the first DATA (a client dying or waiting mid-send) until `release` is set:
        returns (received, release). Unanswered, aiosmtpd drops the transaction, as an MTA
        must: it has not taken responsibility for the mail."""
        import asyncio

        received, release = threading.Event(), threading.Event()
        accept = self.handle_DATA

        async def held(server, session, envelope):
            if not received.is_set():
                received.set()
                await asyncio.get_running_loop().run_in_executor(None, release.wait, 30)
            return await accept(server, session, envelope)

        self.handle_DATA = held
        return received, release

    def messages(self):
        from email import policy
        from email.parser import BytesParser

        return [BytesParser(policy=policy.default).parsebytes(e.content) for e in self.received]


@pytest.fixture
def smtp_server():
    """A real SMTP server on a loopback port."""
    from aiosmtpd.controller import Controller

    recorder = SmtpRecorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port())
    controller.start()
    recorder.port = controller.port
    yield recorder
    controller.stop()


@pytest.fixture
def email_inbox(support, smtp_server):
    return Inbox.objects.create(
        name="Acme Support",
        kind=Channel.EMAIL,
        address="support@acme.example",
        default_team=support,
        settings={"smtp_host": "127.0.0.1", "smtp_port": smtp_server.port, "smtp_timeout": 5},
    )


DOVECOT_CONF = """
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/run
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
mail_uid = dovecot
mail_gid = dovecot
first_valid_uid = 1
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""


@pytest.fixture
def imap_server():
    """A real Dovecot IMAP server on a loopback port with a temporary mail store. Any user
    name logs in with `imap_server.password`."""
    import shutil
    import subprocess
    import tempfile

    if not shutil.which("dovecot"):
        pytest.skip("needs Dovecot (apt-get install dovecot-imapd; .ci/run installs it)")
    root = Path(tempfile.mkdtemp(prefix="dv"))  # short: Dovecot's sockets live under it
    (root / "mail").mkdir()
    (root / "run").mkdir()
    root.chmod(0o755)
    (root / "mail").chmod(0o777)
    port = free_port()

    class Server:
        host, password = "127.0.0.1", "imap-secret"

    Server.port = port
    (root / "dovecot.conf").write_text(
        DOVECOT_CONF.format(root=root, port=port, password=Server.password)
    )
    config = str(root / "dovecot.conf")
    # Without -F, dovecot binds its listeners and only then returns, detached: ready to use.
    # Its output goes to /dev/null: a daemon holding our pipes open would keep run() waiting.
    started = subprocess.run(
        ["dovecot", "-c", config],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    if started.returncode:
        log = root / "dovecot.log"
        raise RuntimeError(f"dovecot did not start: {log.read_text() if log.exists() else ''}")
    yield Server
    subprocess.run(
        ["dovecot", "-c", config, "stop"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    shutil.rmtree(root, ignore_errors=True)


def start_celery_worker(**popen):
    """A real `celery worker` process on this test's database and broker."""
    import subprocess

    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "helpdesk",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "WARNING",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env=subprocess_env(EMBEDDED_WORKER="false"),
        **popen,
    )


def worker_killed_mid_task(enqueue, reached, what: str):
    """Start a real worker, call `enqueue()` (which hands it a task), wait until `reached`
    (an Event the task's far end sets) and SIGKILL the worker there. Returns what `enqueue`
    returned."""
    import signal
    import subprocess

    worker = start_celery_worker(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = enqueue()
        assert reached.wait(30), f"the worker never reached {what}"
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    return result


def start_asgi_server(settings, **env):
    """The real ASGI app (HTTP and WebSockets, with its embedded Celery worker) in a uvicorn
    process on this test's database. Returns (process, base URL) once uvicorn says it is up."""
    import subprocess

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "helpdesk.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--lifespan",
            "on",
        ],
        cwd=ROOT,
        env=subprocess_env(
            **{
                "EMBEDDED_WORKER": "true",
                "MEDIA_ROOT": str(settings.MEDIA_ROOT),
                "SERVED_AT": f"http://127.0.0.1:{port}",  # as `make run` does
                **env,
            }
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    output = []
    for line in process.stderr:  # blocks until uvicorn writes; no timer involved
        output.append(line)
        if "Application startup complete" in line or process.poll() is not None:
            break
    if process.poll() is not None:
        raise RuntimeError("uvicorn did not start:\n" + "".join(output))
    # Keep draining its log, or a chatty server would block on a full pipe: into this
    # process's stderr, which pytest shows with a failing test (a 500's traceback, say).
    threading.Thread(
        target=lambda: [sys.stderr.write(line) for line in process.stderr], daemon=True
    ).start()
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture
def asgi_server(transactional_db, settings):
    """One server process (see start_asgi_server); yields its base URL."""
    process, base = start_asgi_server(settings)
    yield base
    process.terminate()
    process.wait(timeout=30)


NO_REDIS = "redis://127.0.0.1:9/0"  # port 9 on loopback refuses connections


@pytest.fixture
def cache_down(settings):
    """This process's cache is a Redis that refuses every connection, and sessions are kept
    as in production with Redis (helpdesk.sessions): in it, and in the database."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": NO_REDIS}
    }
    settings.SESSION_ENGINE = "helpdesk.sessions"


@pytest.fixture
def server_without_redis(transactional_db, settings):
    """A server process (see start_asgi_server) whose Redis is down: its cache, channel layer
    and broker refuse every connection. Yields its base URL."""
    process, base = start_asgi_server(settings, REDIS_URL=NO_REDIS, EMBEDDED_WORKER="false")
    yield base
    process.terminate()
    process.wait(timeout=30)


def signed_in_http(client, user, base):
    """An HTTP client for the server at `base`, signed in as `user` (a session in the
    database, as signing in there would make)."""
    import httpx

    client.force_login(user)
    return httpx.Client(base_url=base, cookies={"sessionid": client.cookies["sessionid"].value})


@pytest.fixture
def browser():
    """Headless Chromium from Debian, driven by Playwright (.ci/run installs both), started on
    the first `new_page`: set the scene with the services first, since Playwright's sync API
    then runs an event loop in this thread, where publishing events is no longer possible."""
    import shutil

    chromium = shutil.which("chromium")
    if not chromium:
        pytest.skip("needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    running = {}

    class Browser:
        def new_page(self, **context):
            if not running:
                # Plain synchronous ORM reads between browser steps stay allowed.
                os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
                running["playwright"] = sync_playwright().start()
                running["browser"] = running["playwright"].chromium.launch(
                    executable_path=chromium, args=["--no-sandbox"]
                )
            return running["browser"].new_context(**context).new_page()

    yield Browser()
    if running:
        running["browser"].close()
        running["playwright"].stop()
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
