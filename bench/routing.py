"""Routing and assignment: what they add to each inbound message.

10,000 customer messages, each opening a new conversation, go through the real receive
service (`conversations.services.message_receive`, as every channel's task calls it) on
PostgreSQL with 200 routing rules and 50 online agents in 5 teams; then the same number
through the same pipeline with routing switched off (`routing.services.conversation_route`
replaced by a no-op), in the same process and the same run. The two alternate in blocks of
500 so that drift on the shared machine hits both. Between blocks, untimed, the agents
"work": every open conversation is resolved and the agents' inboxes say they are still there.

The rules are the expensive kind: 190 that never or rarely match (keyword lists, wildcard
patterns, customer attributes, languages, time windows, some per inbox) come before the 10
realistic ones, and most of those let later rules apply, so every message is checked against
all 200. Customers carry plan and order-count attributes; texts mix four languages.

Figures: messages/second and per-message latency (p50, p99) of each pipeline; the p99 routing
adds (routing-on p99 minus routing-off p99); and the routing step alone (time spent inside
conversation_route, measured around it), whose p99 is what routing adds per message.
Target (issue "Routing and assignment"): routing adds under 2 ms p99.

    python bench/routing.py [--messages 10000] [--rules 200] [--agents 50] [--block 500]

The ratio in the RESULT line is routing-on p99 / routing-off p99 (end to end).
"""

import argparse
import os
import random
import sys
import time
from pathlib import Path

# Run as `python bench/routing.py`, this file would be found first as "routing", Django's
# routing app: the repository root goes first instead, and the harness comes from there.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.harness import fresh_pg_database, migrate_and_setup, percentile  # noqa: E402

DB_NAME = "threadline_bench_routing"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
TEAMS = ["Support", "Billing", "Sales", "Returns", "Technical"]
# (name, channel, team index)
INBOXES = [
    ("support@acme.example", "email", 0),
    ("billing@acme.example", "email", 1),
    ("Website chat", "webchat", 0),
    ("+1 555 0100", "sms", 3),
    ("Partner API", "api", 4),
]
INBOX_SHARE = [35, 10, 30, 15, 10]
LANGUAGES = ["en", "pt", "fr", "es"]
PLANS = {"free": 60, "pro": 30, "enterprise": 10}
SENTENCES = {
    "en": [
        "My order has not arrived yet.",
        "Can you check my invoice?",
        "The app crashes when I log in.",
        "I would like a refund for the last purchase.",
        "Is this urgent enough to call me back?",
        "How do I change my delivery address?",
    ],
    "pt": [
        "Meu pedido ainda não chegou.",
        "Podem verificar a minha fatura?",
        "Gostaria de um reembolso.",
        "O aplicativo fecha quando entro.",
    ],
    "fr": [
        "Ma commande n'est pas encore arrivée.",
        "Pouvez-vous vérifier ma facture ?",
        "Je voudrais un remboursement.",
    ],
    "es": [
        "Mi pedido aún no ha llegado.",
        "¿Pueden revisar mi factura?",
        "Quiero un reembolso, por favor.",
    ],
}


def nonsense(rng: random.Random) -> str:
    return "".join(rng.choices("bcdfgklmnprstvz", k=3) + rng.choices("aeiou", k=1)) * 2


def setup(rng: random.Random, agents_count: int, rules_count: int, customers: int) -> dict:
    from django.utils import timezone

    from conversations.models import Customer, Identity, Inbox
    from helpdesk.models import User
    from routing.models import RoutingRule, Team, TeamMembership

    teams = [Team.objects.create(name=name, slug=name.lower()) for name in TEAMS]
    agents = User.objects.bulk_create(
        User(
            email=f"agent{n}@acme.example",
            display_name=f"Agent {n}",
            availability="online",
            last_seen_at=timezone.now(),
        )
        for n in range(agents_count)
    )
    TeamMembership.objects.bulk_create(
        TeamMembership(
            team=teams[n % len(teams)],
            user=agent,
            max_open=20,
            skills="pt" if n % 10 == 0 else "",
        )
        for n, agent in enumerate(agents)
    )
    inboxes = [
        Inbox.objects.create(name=name, kind=kind, address=name, default_team=teams[team])
        for name, kind, team in INBOXES
    ]

    # 190 rules that never or rarely match, then 10 realistic ones: all are checked.
    kinds = ["words", "pattern", "plan", "orders", "language", "time", "subject"]
    rules = []
    for n in range(rules_count - 10):
        kind = kinds[n % len(kinds)]
        condition = {
            "words": {
                "field": "text",
                "op": "contains",
                "value": [nonsense(rng) for _ in range(5)],
            },
            "pattern": {"field": "subject_or_text", "op": "like", "value": f"*{nonsense(rng)}*"},
            "plan": {"field": "customer.plan", "op": "is", "value": f"legacy-{n}"},
            "orders": {"field": "customer.orders", "op": "gt", "value": 1000 + n},
            "language": {"field": "language", "op": "in", "value": ["ja", "ko", "zh"]},
            "time": {"field": "time", "op": "between", "value": ["03:00", "03:01"]},
            "subject": {"field": "subject", "op": "starts_with", "value": f"[{nonsense(rng)}]"},
        }[kind]
        rules.append(
            RoutingRule(
                name=f"Noise {n}",
                position=n,
                inbox=inboxes[n % len(inboxes)] if n % 3 == 0 else None,
                conditions=[{"field": "channel", "op": "not_in", "value": ["whatsapp"]}, condition],
                team=teams[n % len(teams)],
                priority=n % 4,
                tags=f"noise-{n % 7}",
            )
        )
    refund = ["refund", "reembolso", "remboursement"]
    realistic = [
        (
            [
                {"field": "text", "op": "contains", "value": refund},
                {"field": "customer.plan", "op": "is", "value": "enterprise"},
            ],
            {"team": teams[1], "priority": 2, "tags": "refund, enterprise"},
        ),
        (
            [{"field": "text", "op": "contains", "value": ["invoice", "fatura", "facture"]}],
            {"team": teams[1], "tags": "invoice"},
        ),
        ([{"field": "channel", "op": "is", "value": "webchat"}], {"tags": "live"}),
        ([{"field": "language", "op": "is", "value": "pt"}], {"tags": "pt"}),
        ([{"field": "customer.orders", "op": "gte", "value": 20}], {"tags": "loyal"}),
        ([{"field": "text", "op": "like", "value": "*urgent*"}], {"priority": 3}),
        ([{"field": "channel", "op": "is", "value": "sms"}], {"team": teams[3]}),
        ([{"field": "customer.plan", "op": "is", "value": "pro"}], {"tags": "pro"}),
        ([{"field": "time", "op": "between", "value": ["22:00", "06:00"]}], {"tags": "night"}),
        ([{"field": "subject", "op": "contains", "value": "sales"}], {"team": teams[2]}),
    ]
    for n, (conditions, actions) in enumerate(realistic):
        rules.append(
            RoutingRule(
                name=f"Realistic {n}",
                position=1000 + n,
                conditions=conditions,
                stop=False,
                **actions,
            )
        )
    for made in rules:
        made.full_clean()
    RoutingRule.objects.bulk_create(rules)

    # The customers, with their attributes, exist before they write (as a CRM sync would).
    people = Customer.objects.bulk_create(
        Customer(
            name=f"Customer {n}",
            attributes={
                "plan": rng.choices(list(PLANS), weights=list(PLANS.values()))[0],
                "orders": rng.randint(0, 40),
            },
        )
        for n in range(customers)
    )
    plan = []
    identities = []
    for n, customer in enumerate(people):
        inbox = rng.choices(inboxes, weights=INBOX_SHARE)[0]
        address = f"c{n}@customers.example" if inbox.kind == "email" else f"+1555{n:07d}"
        if inbox.kind in ("webchat", "api"):
            address = f"{inbox.kind}-{n}"
        identities.append(Identity(customer=customer, kind=inbox.kind, address=address))
        language = rng.choice(LANGUAGES)
        text = " ".join(rng.sample(SENTENCES[language], k=2))
        subject = rng.choice(["Order", "Invoice question", "Help", "sales enquiry", "Urgent"])
        plan.append((inbox, address, text, subject if inbox.kind == "email" else "", language))
    Identity.objects.bulk_create(identities)
    return {"plan": plan, "agents": agents}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000, help="per pipeline")
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--block", type=int, default=500)
    args = parser.parse_args()

    env = {
        "DATABASE_URL": fresh_pg_database(DB_NAME),
        "DATABASE_POOL": "false",  # one thread, one connection
        "REDIS_URL": REDIS_URL,
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
    }
    migrate_and_setup(env)
    from django.db import connection
    from django.db.models import Count, Q
    from django.utils import timezone

    from conversations import services
    from conversations.models import Conversation
    from helpdesk.models import User
    from routing import services as routing
    from routing.models import TeamMembership

    rng = random.Random(7)
    started = time.perf_counter()
    world = setup(rng, args.agents, args.rules, 2 * args.messages)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"set-up: {time.perf_counter() - started:.1f} s")

    route_real = routing.conversation_route
    route_times: list[float] = []

    def route_timed(**kwargs):
        begun = time.perf_counter()
        try:
            return route_real(**kwargs)
        finally:
            route_times.append(time.perf_counter() - begun)

    def route_off(*, conversation, message):
        return []

    capacity = dict(TeamMembership.objects.values_list("user_id", "max_open"))
    latencies = {"on": [], "off": []}
    elapsed = {"on": 0.0, "off": 0.0}
    assigned = {"on": 0, "off": 0}
    over_capacity = 0
    plan = iter(world["plan"])
    blocks = args.messages // args.block
    for block in range(2 * blocks):
        mode = "on" if block % 2 == 0 else "off"
        routing.conversation_route = route_timed if mode == "on" else route_off
        # Untimed: the agents resolved what they had and their inboxes are still open.
        Conversation.objects.filter(status="open").update(
            status="resolved", resolved_at=timezone.now()
        )
        User.objects.update(last_seen_at=timezone.now())
        begun_block = time.perf_counter()
        for _ in range(args.block):
            inbox, address, text, subject, language = next(plan)
            begun = time.perf_counter()
            received = services.message_receive(
                inbox=inbox,
                inbound=services.InboundMessage(
                    channel=inbox.kind,
                    address=address,
                    text=text,
                    subject=subject,
                    language=language,
                ),
            )
            latencies[mode].append(time.perf_counter() - begun)
            assert received.created
        elapsed[mode] += time.perf_counter() - begun_block
        open_work = Conversation.objects.filter(status="open")
        assigned[mode] += open_work.filter(assignee__isnull=False).count()
        if mode == "on":
            # Weighted load per agent must stay within capacity.
            for row in open_work.values("assignee_id").annotate(
                chats=Count("id", filter=Q(inbox__kind="webchat")), others=Count("id")
            ):
                if row["assignee_id"] is None:
                    continue
                load = 3 * row["chats"] + (row["others"] - row["chats"])
                over_capacity += load > capacity[row["assignee_id"]]

    def ms(seconds):
        return seconds * 1000

    figures = {}
    for mode in ("on", "off"):
        values = latencies[mode]
        figures[mode] = (
            len(values) / elapsed[mode],
            ms(percentile(values, 0.5)),
            ms(percentile(values, 0.99)),
        )
        print(
            f"routing {mode:>3}: {len(values)} messages, {figures[mode][0]:.0f} msg/s, "
            f"p50 {figures[mode][1]:.2f} ms, p99 {figures[mode][2]:.2f} ms, "
            f"assigned {assigned[mode]}"
        )
    route_p50, route_p99 = ms(percentile(route_times, 0.5)), ms(percentile(route_times, 0.99))
    added_p50 = figures["on"][1] - figures["off"][1]
    added_p99 = figures["on"][2] - figures["off"][2]
    print(f"routing step alone: p50 {route_p50:.2f} ms, p99 {route_p99:.2f} ms")
    print(f"added end to end: p50 {added_p50:.2f} ms, p99 {added_p99:.2f} ms")
    print(f"agents over capacity after a block: {over_capacity}")
    print(
        f"RESULT routing msgs_per_s={figures['on'][0]:.0f} "
        f"baseline_msgs_per_s={figures['off'][0]:.0f} p99_ms={figures['on'][2]:.2f} "
        f"baseline_p99_ms={figures['off'][2]:.2f} p99_added_ms={added_p99:.2f} "
        f"route_p50_ms={route_p50:.2f} route_p99_ms={route_p99:.2f} "
        f"over_capacity={over_capacity} ratio={figures['on'][2] / figures['off'][2]:.2f}"
    )


if __name__ == "__main__":
    main()
