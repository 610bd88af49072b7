"""The Celery app, and the embedded worker + beat that run inside the server process when
there is no Redis (the README's run command): same tasks, same schedule, no extra process."""

import gc
import logging
import os
import threading
from importlib import import_module

from celery import Celery
from celery.beat import EmbeddedService, Scheduler
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "helpdesk.settings")

app = Celery("helpdesk")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

log = logging.getLogger(__name__)


def freeze_startup_objects() -> None:
    """Keep what start-up made (modules, models, URL patterns: ~125,000 objects) out of the
    garbage collector's full passes, which otherwise walk all of it: ~50 ms every few hundred
    requests or tasks, stalling whatever the process was doing (`gc.freeze`, as large Django
    sites do). Called once a server or worker process is ready, before it takes work."""
    from django.conf import settings

    import_module(settings.ROOT_URLCONF)  # every view now, rather than on the first request
    gc.collect()
    gc.freeze()


@worker_init.connect
def _worker_ready(**kwargs):
    freeze_startup_objects()  # in the parent, before a prefork pool forks its children


@app.on_after_finalize.connect
def _schedule(sender, **kwargs):
    from django.conf import settings

    sender.conf.beat_schedule = {
        "sweep-stuck": {
            "task": "channels_adapters.tasks.sweep_stuck",
            "schedule": float(settings.SWEEP_INTERVAL_SECONDS),
        },
        # Outgoing webhooks whose task was lost (broker down at commit, a worker killed).
        "sweep-webhooks": {
            "task": "channels_adapters.tasks.sweep_webhooks",
            "schedule": float(settings.SWEEP_INTERVAL_SECONDS),
        },
        # Notifications left unread, by email to the agents who chose them.
        "email-notifications": {
            "task": "conversations.tasks.email_notifications",
            "schedule": float(settings.SWEEP_INTERVAL_SECONDS),
        },
        "wake-snoozed": {"task": "conversations.tasks.wake_snoozed", "schedule": 30.0},
        "poll-mailboxes": {
            "task": "channels_adapters.tasks.poll_mailboxes",
            "schedule": float(settings.MAIL_POLL_INTERVAL_SECONDS),
        },
        "webchat-follow-ups": {
            "task": "channels_adapters.tasks.webchat_follow_ups_due",
            "schedule": 60.0,
        },
        # Expired sessions, old webhook deliveries and notifications, silent chat visitors: hourly,
        # since the embedded beat forgets its schedule on restart (a daily task might never run).
        "housekeeping": {"task": "helpdesk.tasks.housekeeping", "schedule": 3600.0},
        "check-mailbox-health": {
            "task": "channels_adapters.tasks.check_mailbox_health",
            "schedule": 900.0,
        },
        # Waiting conversations to agents with room, offline agents' chats back to the queue.
        "routing-queues": {"task": "routing.tasks.queues_sweep", "schedule": 30.0},
        "routing-sla": {"task": "routing.tasks.sla_sweep", "schedule": 30.0},
        # Automatic replies and surveys whose task was lost.
        "routing-replies": {
            "task": "routing.tasks.replies_sweep",
            "schedule": float(settings.SWEEP_INTERVAL_SECONDS),
        },
        # "Pending for 3 days" automations: their times are hours, so a few minutes is plenty.
        "automations-idle": {"task": "routing.tasks.automations_idle", "schedule": 300.0},
    }


class EmbeddedWorker:
    """A Celery worker and beat on daemon threads of this process, consuming the in-memory
    broker. Started and stopped by the ASGI lifespan (helpdesk.asgi), never at import."""

    def __init__(self, concurrency: int = 2):
        self.concurrency = concurrency
        self.worker = None
        self.beat = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        app.loader.import_default_modules()
        # WorkController is the bare worker: unlike app.Worker it installs no signal handlers
        # (only the main thread may) and leaves stdout and logging alone.
        self.worker = app.WorkController(
            pool_cls="threads",
            concurrency=self.concurrency,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            hostname="embedded@threadline",
            loglevel=logging.WARNING,
        )
        # Beat ticks at least every few seconds so a short schedule (tests) is honoured.
        app.conf.beat_max_loop_interval = 5
        self.beat = EmbeddedService(app, thread=True, scheduler_cls=Scheduler)
        worker_thread = threading.Thread(
            target=self.worker.start, name="celery-worker", daemon=True
        )
        worker_thread.start()
        self.beat.start()
        self._threads = [worker_thread, self.beat]
        log.info("embedded Celery worker and beat started")

    def stop(self) -> None:
        if self.beat is not None:
            self.beat.stop()
        if self.worker is not None:
            self.worker.stop(in_sighandler=False, exitcode=0)
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []
        log.info("embedded Celery worker and beat stopped")

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)


embedded = EmbeddedWorker()
