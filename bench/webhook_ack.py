"""Webhook acknowledgement: how fast a provider's signed POST gets its 200.

One ASGI server process (uvicorn, the production setup: PostgreSQL + Redis, no worker in the
process) serves both contestants, in one run, alternating:
  webhook   POST /channels/sms/<inbox>/webhook, Twilio-signed form bodies: verify the
            signature, check the body, store the raw event, enqueue its task, answer TwiML;
            10% of the requests replay an earlier one and must change nothing
  floor     POST /bench/floor: a Django view that answers 200 without work, through the same
            middleware (the cost of Django and the server alone)
Requests are sent open-loop at --rate per second (a provider does not wait for our previous
answer), latency measured per request; then each is driven closed-loop with --concurrency
requests in flight, for the sustained requests per second.

Target (issue "SMS, Messenger and WhatsApp"): p99 under 20 ms at 200 requests/s, within 3x the
floor, and every replay stored once.

    python bench/webhook_ack.py [--rate 200] [--seconds 15] [--concurrency 32]
"""

import os

if __name__ != "__main__":
    # Imported by uvicorn as the application under test: Threadline plus the floor view.
    from django.http import HttpResponse
    from django.urls import include, path
    from django.views.decorators.csrf import csrf_exempt

    from helpdesk.asgi import application  # noqa: F401 - what uvicorn serves

    @csrf_exempt
    def floor(request):
        return HttpResponse("ok", content_type="text/plain")

    urlpatterns = [path("bench/floor", floor), path("", include("helpdesk.urls"))]
    from django.conf import settings

    settings.ROOT_URLCONF = __name__

import argparse
import asyncio
import random
import signal
import statistics
import time
from pathlib import Path
from urllib.parse import urlencode

from harness import (
    Connections,
    free_port,
    fresh_pg_database,
    migrate_and_setup,
    percentile,
    uvicorn,
)

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
AUTH_TOKEN = "bench-auth-token"
ACCOUNT = "AC" + "b" * 32


def setup_django(env: dict) -> int:
    """Migrate the fresh database and create the SMS inbox; returns its id."""
    migrate_and_setup(env)
    from conversations.models import Channel, Inbox

    inbox = Inbox.objects.create(
        name="Bench SMS",
        kind=Channel.SMS,
        address="+15005550006",
        settings={"account_sid": ACCOUNT},
        credentials={"auth_token": AUTH_TOKEN},
    )
    return inbox.pk


def twilio_requests(url: str, count: int, replay_share: float) -> tuple[list, set]:
    """(body, signature) pairs shaped like Twilio's, signed for `url`; a share of them replay
    an earlier one. Returns the requests and the set of distinct message sids."""
    from twilio.request_validator import RequestValidator

    validator, rng = RequestValidator(AUTH_TOKEN), random.Random(7)
    requests, sids = [], set()
    for index in range(count):
        if requests and rng.random() < replay_share:
            requests.append(requests[rng.randrange(max(0, len(requests) - 400), len(requests))])
            continue
        sid = f"SM{index:032x}"
        params = {
            "SmsMessageSid": sid,
            "NumMedia": "0",
            "SmsSid": sid,
            "SmsStatus": "received",
            "Body": rng.choice(["Olá, o meu pedido?", "Where is my order?", "¿Factura? 🙏"]),
            "To": "+15005550006",
            "NumSegments": "1",
            "MessageSid": sid,
            "AccountSid": ACCOUNT,
            "From": f"+3519{rng.randrange(10**7, 10**8)}",
            "ApiVersion": "2010-04-01",
        }
        requests.append((urlencode(params).encode(), validator.compute_signature(url, params)))
        sids.add(sid)
    return requests, sids


async def send(connections, path, body, signature) -> int:
    status, _ = await connections.request(
        "POST",
        path,
        body,
        {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature},
    )
    return status


async def open_loop(connections, path, requests, rate) -> tuple[list[float], list[int]]:
    """Send at a fixed rate whatever the answers do; latency of each, in ms."""
    latencies, statuses = [], []

    async def one(body, signature):
        started = time.perf_counter()
        statuses.append(await send(connections, path, body, signature))
        latencies.append((time.perf_counter() - started) * 1000)

    tasks, start = [], time.perf_counter()
    for index, (body, signature) in enumerate(requests):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(body, signature)))
    await asyncio.gather(*tasks)
    return latencies, statuses


async def closed_loop(connections, path, requests, concurrency) -> float:
    """As fast as the server answers with `concurrency` requests in flight: requests/s."""
    queue = list(requests)
    started = time.perf_counter()

    async def worker():
        while queue:
            await send(connections, path, *queue.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(requests) / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    port = free_port()
    env = {
        "DATABASE_URL": fresh_pg_database("threadline_bench_webhook"),
        "DATABASE_CONN_MAX_AGE": "60",
        "REDIS_URL": REDIS_URL,
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    inbox_id = setup_django(env)
    import redis

    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()  # no worker runs: the tasks the webhooks enqueue are dropped after
    server = uvicorn("webhook_ack:application", port, env)
    webhook_path = f"/channels/sms/{inbox_id}/webhook"
    floor_path = "/bench/floor"
    per_round = args.rate * args.seconds
    webhook_url = f"http://127.0.0.1:{port}{webhook_path}"
    requests, sids = twilio_requests(webhook_url, per_round * 2 + 2000, replay_share=0.10)
    rounds = [requests[:per_round], requests[per_round : per_round * 2]]
    saturation = requests[per_round * 2 :]

    async def run():
        connections = Connections("127.0.0.1", port)
        for _ in range(300):  # wait for the server
            try:
                await connections.request("POST", "/bench/floor")
                break
            except OSError:
                await asyncio.sleep(0.1)
        for path in (floor_path, webhook_path):  # warm up: connections, imports, caches
            await open_loop(connections, path, requests[:200], args.rate)
        results = {"floor": ([], []), "webhook": ([], [])}
        for batch in rounds:  # alternate, so drift on a shared machine hits both
            for name, path in (("floor", floor_path), ("webhook", webhook_path)):
                latencies, statuses = await open_loop(connections, path, batch, args.rate)
                results[name][0].extend(latencies)
                results[name][1].extend(statuses)
        sustained = {
            "floor": await closed_loop(connections, floor_path, saturation, args.concurrency),
            "webhook": await closed_loop(connections, webhook_path, saturation, args.concurrency),
        }
        return results, sustained

    try:
        results, sustained = asyncio.run(run())
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)

    broker.flushdb()
    from channels_adapters.models import InboundEvent

    stored = InboundEvent.objects.filter(inbox_id=inbox_id).count()
    stored_once = stored == len(sids)
    figures = {}
    for name, (latencies, statuses) in results.items():
        bad = sum(status != 200 for status in statuses)
        figures[name] = (
            statistics.median(latencies),
            percentile(latencies, 0.99),
            max(latencies),
        )
        print(
            f"{name:8} {len(latencies)} requests at {args.rate}/s: "
            f"p50 {figures[name][0]:.1f} ms  p99 {figures[name][1]:.1f} ms  "
            f"max {figures[name][2]:.1f} ms  non-200 {bad}  "
            f"sustained {sustained[name]:.0f} req/s (concurrency {args.concurrency})"
        )
    print(
        f"distinct messages sent {len(sids)}, events stored {stored} (replays stored once: "
        f"{'yes' if stored_once else 'NO'})"
    )
    p50, p99, _ = figures["webhook"]
    floor_p99 = figures["floor"][1]
    print(
        f"RESULT webhook_ack p50_ms={p50:.1f} p99_ms={p99:.1f} rps={sustained['webhook']:.0f} "
        f"floor_p99_ms={floor_p99:.1f} floor_rps={sustained['floor']:.0f} "
        f"stored_once={'yes' if stored_once else 'no'} ratio={p99 / floor_p99:.2f}"
    )


if __name__ == "__main__":
    main()
