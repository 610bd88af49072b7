"""One ASGI application for HTTP, WebSockets and static files.

In embedded mode (no REDIS_URL) the lifespan protocol also starts and stops the in-process
Celery worker and beat, so `make run` is a single process.
"""

import asyncio
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "helpdesk.settings")
django.setup(set_prefix=False)  # before the imports below


class RequestThread(ThreadPoolExecutor):
    """One thread that serves one request at a time, and knows whether it is done with it."""

    def __init__(self):
        super().__init__(max_workers=1, thread_name_prefix="http")
        self.submitted = self.finished = 0  # each written by one thread only

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1  # from the event loop
        return super().submit(self._run, fn, args, kwargs)

    def _run(self, fn, args, kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            self.finished += 1  # from this thread


class PooledThreadsASGIHandler(ASGIHandler):
    """Django's ASGI handler, except that a request's synchronous code (middleware, views) runs
    on a thread kept from earlier requests rather than one started for it and joined after:
    that start and join were a tenth of a webhook's CPU (bench/webhook_ack.py). A thread
    still busy when its request ends (the client went away mid-view) is not reused."""

    KEEP = 64

    def __init__(self):
        super().__init__()
        self.idle: list[RequestThread] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        thread = self.idle.pop() if self.idle else RequestThread()
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send)
        finally:
            if thread.submitted == thread.finished and len(self.idle) < self.KEEP:
                self.idle.append(thread)
            else:
                thread.shutdown(wait=False)  # ends once its last call returns


django_http = PooledThreadsASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from conversations.ws_urls import websocket_urlpatterns  # noqa: E402

log = logging.getLogger(__name__)

# WhiteNoise serves static files with a synchronous iterator, which Django's ASGI handler
# consumes in a thread and warns about on every file. Harmless for static assets, which a
# proxy or CDN caches in production.
warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous")

router = ProtocolTypeRouter(
    {
        "http": django_http,
        "websocket": URLRouter(websocket_urlpatterns),
    }
)


async def lifespan(scope, receive, send):
    from asgiref.sync import sync_to_async

    from conversations import realtime
    from helpdesk.celery import embedded, freeze_startup_objects

    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            realtime.serving_loop = asyncio.get_running_loop()
            try:
                if settings.EMBEDDED_WORKER:
                    await sync_to_async(embedded.start, thread_sensitive=False)()
                freeze_startup_objects()
            except Exception as exc:
                log.exception("embedded worker failed to start")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            if settings.EMBEDDED_WORKER:
                await sync_to_async(embedded.stop, thread_sensitive=False)()
            realtime.serving_loop = None
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
    else:
        await router(scope, receive, send)
