"""One ASGI application for HTTP, WebSockets and static files.

In embedded mode (no REDIS_URL) the lifespan protocol also starts and stops the in-process
Celery worker and beat, so `make run` is a single process.
"""

import logging
import os
import warnings

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "helpdesk.settings")
django_http = get_asgi_application()  # sets Django up before the imports below

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

    from helpdesk.celery import embedded

    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            try:
                if settings.EMBEDDED_WORKER:
                    await sync_to_async(embedded.start, thread_sensitive=False)()
            except Exception as exc:
                log.exception("embedded worker failed to start")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            if settings.EMBEDDED_WORKER:
                await sync_to_async(embedded.stop, thread_sensitive=False)()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
    else:
        await router(scope, receive, send)
