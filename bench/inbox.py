"""The agent inbox at scale: how fast the list, search and conversation pages answer.

A fresh PostgreSQL database is filled (COPY, secondary indexes built after the load) with
100,000 conversations and about 1,000,000 messages: 5 teams, 50 agents (one admin), 7 inboxes
on five channels, 60,000 customers with their identities, tags, events and notifications;
message text is drawn from a Zipf-distributed vocabulary of English, Portuguese, French and
Spanish words plus a long tail of rare ones, so full-text search has realistic selectivity.

uvicorn (--workers processes, as `docker compose --scale web=N` runs them; PostgreSQL through
the connection pool, Redis, `DEBUG` off) then serves 20 logged-in agents at once; each sends a
request, waits for the answer, thinks for a random while (exponential, mean --think seconds)
and sends the next. The run alternates two kinds of phase, twice each: three quarters of the
time the agents work in the inbox, one shuffled mix of
  list          /inbox/ views mine / unassigned / teams / all (admin), without filters
  list_filtered the same views filtered by status, channel, priority, tag, or a second page
                through the keyset cursor
  search        ?q= a common word, a rare word, a phone fragment, a customer's name
  conversation  /inbox/<number>/ for a conversation the agent may see
and a quarter of the time the same 20 work in the baseline instead:
  admin         Django admin's changelist of the same table, default and with ?q=
A phase ends when its last answer is in, so neither tool's requests queue behind the other's
(a changelist search costs seconds of CPU: mixed in, it decided the inbox's p95).
Latency is measured per request by a hand-written keep-alive HTTP/1.1 client (a Python HTTP
library costs about as much CPU per request as the server, on the same two cores).

Target (issue "The agent inbox"): list p95 under 50 ms, search p95 under 150 ms, conversation
page p95 under 80 ms, and each faster than the admin changelist.

    python bench/inbox.py [--seconds 90] [--agents 20] [--think 1.0] [--workers 1] [--reuse]

--reuse skips the fill and measures the database of the previous run (after `migrate`, so a
new migration is measured against the same data).
"""

import argparse
import asyncio
import html
import json
import os
import random
import re
import signal
import statistics
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

from harness import (
    PG_URL,
    Connections,
    free_port,
    fresh_pg_database,
    migrate_and_setup,
    percentile,
    uvicorn,
)

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
DB_NAME = "threadline_bench_inbox"

TEAMS = ["Support", "Billing", "Sales", "Returns", "Technical"]
# (name, channel, default team index)
INBOXES = [
    ("support@acme.example", "email", 0),
    ("billing@acme.example", "email", 1),
    ("Website chat", "webchat", 0),
    ("+1 555 0100", "sms", 3),
    ("Acme on Messenger", "messenger", 2),
    ("WhatsApp +351", "whatsapp", 3),
    ("Partner API", "api", 4),
]
INBOX_SHARE = [30, 12, 25, 10, 10, 10, 3]
TAGS = ["billing", "refund", "shipping", "bug", "vip", "complaint", "feature-request", "b2b"]
STATUS_SHARE = {"open": 12, "pending": 8, "snoozed": 3, "resolved": 42, "closed": 35}
PRIORITY_SHARE = {0: 20, 1: 60, 2: 15, 3: 5}

# Helpdesk vocabulary in four languages, most frequent first; the Zipf tail is made-up words.
WORDS = """
the de que a e o la le et y to não no is para por en pour i you my el les des um una un
is é est es it com with avec con order pedido commande encomenda help ajuda aide ayuda
please por favor s'il vous plaît obrigado gracias merci thanks hello olá bonjour hola
refund reembolso remboursement devolución delivery entrega livraison envío payment pagamento
paiement pago invoice fatura facture factura account conta compte cuenta password senha
mot de passe contraseña problem problema problème issue erro error erreur days dias jours
días still ainda toujours todavía received recebi reçu recibí package pacote colis paquete
address morada adresse dirección card cartão carte tarjeta cancel cancelar annuler charged
cobrado débité cobrado twice duas vezes deux fois dos veces size tamanho taille talla
exchange troca échange cambio wrong errado mauvais equivocado broken partido cassé roto
subscription assinatura abonnement suscripción login app website site sitio tracking
rastreio suivi seguimiento number número numéro week semana semaine urgent urgente
""".split()
FIRST = """Ana João Maria Pedro Inês Tiago Sofia Miguel Camille Louis Léa Hugo Chloé Lucas
Manon Jules Lucía Mateo Sofía Martín Valentina Diego Carmen Javier Emma Liam Olivia Noah
Ava James Mia Ethan Beatriz Rafael Mariana Gonçalo Élodie Théo Pilar Andrés""".split()
LAST = """Silva Santos Ferreira Pereira Oliveira Costa Rodrigues Martins Dubois Moreau Laurent
Lefebvre Girard Bonnet Fontaine Rousseau García Fernández López Martínez Sánchez Romero
Navarro Torres Smith Johnson Brown Taylor Wilson Davies Evans Walker Almeida Carvalho
Gomes Mercier Blanc Ruiz Ortega Murphy""".split()
LANGUAGES = ["en", "pt", "fr", "es"]
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


# --- Fill ------------------------------------------------------------------------------------


def vocabulary(rng: random.Random, size: int = 30000) -> list[str]:
    syllables = [c + v for c in "bcdfgklmnprstvz" for v in "aeiou"] + ["ão", "ez", "eau", "ch"]
    words, seen = list(WORDS), set(WORDS)
    while len(words) < size:
        word = "".join(rng.choices(syllables, k=rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def pick(rng: random.Random, shares: dict):
    return rng.choices(list(shares), weights=list(shares.values()))[0]


def copy_rows(cur, model, columns: list[str], rows) -> int:
    """COPY rows into the model's table. Columns the caller leaves out but the table needs
    (NOT NULL, no database default) get the field's Python default ("" for text), so a field
    added later does not break the fill."""
    fields = {f.column: f for f in model._meta.concrete_fields}
    extra = [c for c, f in fields.items() if c not in columns and not f.null and not f.primary_key]
    defaults = []
    for column in extra:
        value = fields[column].get_default()
        defaults.append(
            json.dumps(value) if fields[column].get_internal_type() == "JSONField" else value
        )
    table = model._meta.db_table
    names = ", ".join(f'"{c}"' for c in columns + extra)
    count = 0
    with cur.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row((*row, *defaults))
            count += 1
    return count


def fill(db_url: str, conversations: int, seed: int = 7) -> dict:
    """Fill the database; returns what the load needs to know (sessions are made later)."""
    import psycopg
    from django.contrib.auth.hashers import make_password

    from conversations.models import (
        Conversation,
        ConversationEvent,
        Customer,
        Identity,
        Inbox,
        Message,
        Notification,
        Tag,
    )
    from helpdesk.models import User
    from routing.models import Team, TeamMembership

    rng = random.Random(seed)
    started = time.perf_counter()
    teams = [Team.objects.create(name=n, slug=n.lower()) for n in TEAMS]
    password = make_password("bench-password-123")
    users = []
    for index in range(50):
        admin = index == 0
        users.append(
            User(
                email=f"agent{index:02d}@acme.example",
                display_name=f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                password=password,
                role=User.Role.ADMIN if admin else User.Role.AGENT,
                is_staff=admin,
                is_superuser=admin,
            )
        )
    users = User.objects.bulk_create(users)
    team_members = defaultdict(list)
    memberships = []
    for index, user in enumerate(users[1:]):
        own = {index % len(teams)}
        if rng.random() < 0.2:
            own.add(rng.randrange(len(teams)))
        for t in own:
            memberships.append(TeamMembership(team=teams[t], user=user, is_lead=index < 5))
            team_members[t].append(user.pk)
    TeamMembership.objects.bulk_create(memberships)
    inboxes = Inbox.objects.bulk_create(
        [Inbox(name=n, kind=k, address=n, default_team=teams[t]) for n, k, t in INBOXES]
    )
    tags = Tag.objects.bulk_create([Tag(name=n) for n in TAGS])

    words = vocabulary(rng)
    # Zipf (s=1.05) over the vocabulary; messages take slices of one long stream of draws.
    weights = [1 / (rank + 1) ** 1.05 for rank in range(len(words))]
    stream = rng.choices(words, weights=weights, k=3_000_000)

    def text(low: int, high: int) -> str:
        n = rng.randint(low, high)
        at = rng.randrange(len(stream) - n)
        return " ".join(stream[at : at + n])

    customers = conversations * 3 // 5
    # Identities: every customer has one or two addresses on the channels they write from.
    identities: dict[int, dict[str, int]] = {}
    phones: list[str] = []
    names: list[str] = []
    identity_rows = []
    identity_id = 0
    taken: set[str] = set()
    for cid in range(1, customers + 1):
        kinds = {rng.choices(["email", "sms", "webchat", "messenger"], [45, 25, 20, 10])[0]}
        if rng.random() < 0.35:
            kinds.add(rng.choice(["email", "sms", "whatsapp"]))
        identities[cid] = {}
        for kind in kinds:
            identity_id += 1
            if kind == "email":
                address = f"customer{cid}@mail{cid % 97}.example"
            elif kind in ("sms", "whatsapp"):
                address = f"+3519{rng.randrange(10**8):08d}"
                while address in taken:  # unique per channel, like the real constraint
                    address = f"+3519{rng.randrange(10**8):08d}"
                taken.add(address)
                phones.append(address)
            elif kind == "messenger":
                address = f"psid-{rng.getrandbits(60)}"
            else:
                address = f"visitor-{rng.getrandbits(64):016x}"
            identities[cid][kind] = identity_id
            identity_rows.append(
                (identity_id, cid, kind, address, "", kind == "email", NOW - timedelta(days=400))
            )
    customer_rows = []
    for cid in range(1, customers + 1):
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}" if rng.random() < 0.9 else ""
        names.append(name)
        customer_rows.append(
            (
                cid,
                name,
                rng.choice(LANGUAGES),
                "",
                json.dumps({"plan": rng.choice(["free", "pro", "business"])}),
                "",
                NOW - timedelta(days=rng.randrange(30, 800)),
                NOW,
            )
        )

    inbox_team = {inbox.pk: teams.index(inbox.default_team) for inbox in inboxes}
    conversation_rows, message_rows, event_rows, tag_rows, notification_rows = [], [], [], [], []
    visible_by_team = defaultdict(list)
    assigned_to = defaultdict(list)
    message_id = event_id = 0
    for number in range(1, conversations + 1):
        inbox = rng.choices(inboxes, INBOX_SHARE)[0]
        customer = rng.randrange(1, customers + 1)
        status = pick(rng, STATUS_SHARE)
        active = status in ("open", "pending")
        roll = rng.random()
        team = inbox_team[inbox.pk] if roll < 0.85 else (None if roll < 0.9 else rng.randrange(5))
        if rng.random() < (0.3 if active else 0.05):
            assignee = None
        else:
            pool = team_members[team if team is not None else inbox_team[inbox.pk]]
            assignee = rng.choice(pool)
        # Recent activity is denser: most active conversations moved in the last days.
        age = rng.expovariate(1 / (3 if active else 120))
        last_activity = NOW - timedelta(days=min(age, 720), seconds=rng.randrange(86400))
        created = last_activity - timedelta(hours=rng.expovariate(1 / 30))
        count = max(1, min(40, int(rng.gammavariate(2.0, 4.6)) + 1))
        kind = inbox.kind
        identity = identities[customer].get(kind) or next(iter(identities[customer].values()))
        when = created
        step = (last_activity - created) / count
        direction = "inbound"
        first_response = None
        last_inbound = None
        for index in range(count):
            message_id += 1
            if index == 0:
                direction = "inbound"
            elif rng.random() < 0.05:
                direction = "system"
            elif rng.random() < 0.08:
                direction = "note"
            else:
                direction = "outbound" if direction == "inbound" else "inbound"
            when = created + step * (index + 1) if index else created
            author = assignee if direction in ("outbound", "note") else None
            if direction == "outbound" and author is None:
                author = users[rng.randrange(1, 50)].pk
            if direction == "outbound" and first_response is None:
                first_response = when
            if direction == "inbound":
                last_inbound = when
            body = (
                text(4, 12)
                if direction == "system"
                else text(3, 25)
                if rng.random() < 0.6
                else text(25, 120)
            )
            message_rows.append(
                (
                    message_id,
                    number,
                    direction,
                    kind,
                    inbox.pk,
                    identity if direction in ("inbound", "outbound") else None,
                    author,
                    body,
                    {"inbound": "received", "outbound": "delivered"}.get(direction, ""),
                    when,
                    when,
                )
            )
        waiting = last_inbound if active and direction == "inbound" else None
        subject = text(3, 7) if kind == "email" else ""
        conversation_rows.append(
            (
                number,
                inbox.pk,
                customer,
                subject[:300],
                status,
                pick(rng, PRIORITY_SHARE),
                teams[team].pk if team is not None else None,
                assignee,
                f"{rng.getrandbits(160):040x}",
                "",
                created,
                last_activity,
                last_activity,
                last_inbound,
                waiting,
                first_response,
                last_activity if status in ("resolved", "closed") else None,
                last_activity + timedelta(days=2) if status == "snoozed" else None,
            )
        )
        event_id += 1
        event_rows.append((event_id, number, "created", None, "{}", created))
        if assignee:
            event_id += 1
            event_rows.append((event_id, number, "assigned", None, "{}", created))
            assigned_to[assignee].append(number)
            if rng.random() < 0.15:
                read = None if rng.random() < 0.3 else last_activity
                notification_rows.append((assignee, "assigned", number, created, read))
        if rng.random() < 0.3:
            for tag in rng.sample(tags, rng.choice([1, 1, 2])):
                tag_rows.append((number, tag.pk))
        for t in {team, inbox_team[inbox.pk]} - {None}:
            visible_by_team[t].append(number)
    generated = time.perf_counter() - started
    print(
        f"generated {customers} customers, {len(identity_rows)} identities, {conversations} "
        f"conversations, {len(message_rows)} messages in {generated:.0f} s"
    )

    loaded = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # no FK triggers for the load
        conn.execute("SET maintenance_work_mem = '512MB'")
        tables = [m._meta.db_table for m in (Conversation, Message, ConversationEvent)]
        tables += [Customer._meta.db_table, Identity._meta.db_table]
        # Secondary indexes are built once after the load, far faster than row by row.
        indexes = conn.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = ANY(%s) "
            "AND i.indexname NOT IN (SELECT c.relname FROM pg_constraint k "
            "JOIN pg_class c ON c.oid = k.conindid)",
            [tables],
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        t = time.perf_counter()
        with conn.cursor() as cur:
            copy_rows(
                cur,
                Customer,
                [
                    "id",
                    "name",
                    "language",
                    "timezone",
                    "attributes",
                    "notes",
                    "created_at",
                    "updated_at",
                ],
                customer_rows,
            )
            copy_rows(
                cur,
                Identity,
                ["id", "customer_id", "kind", "address", "display_name", "verified", "created_at"],
                identity_rows,
            )
            copy_rows(
                cur,
                Conversation,
                [
                    "id",
                    "inbox_id",
                    "customer_id",
                    "subject",
                    "status",
                    "priority",
                    "team_id",
                    "assignee_id",
                    "reply_token",
                    "flag_reason",
                    "created_at",
                    "updated_at",
                    "last_activity_at",
                    "last_inbound_at",
                    "waiting_since",
                    "first_response_at",
                    "resolved_at",
                    "snoozed_until",
                ],
                conversation_rows,
            )
            copy_rows(
                cur,
                Message,
                [
                    "id",
                    "conversation_id",
                    "direction",
                    "channel",
                    "inbox_id",
                    "identity_id",
                    "author_id",
                    "text",
                    "status",
                    "created_at",
                    "updated_at",
                ],
                message_rows,
            )
            copy_rows(
                cur,
                ConversationEvent,
                ["id", "conversation_id", "kind", "actor_id", "data", "created_at"],
                event_rows,
            )
            copy_rows(
                cur,
                Conversation.tags.through,
                ["conversation_id", "tag_id"],
                tag_rows,
            )
            copy_rows(
                cur,
                Notification,
                ["recipient_id", "kind", "conversation_id", "created_at", "read_at"],
                notification_rows,
            )
        loaded["copy_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for _, definition in indexes:
            conn.execute(definition)
        loaded["index_s"] = time.perf_counter() - t
        for model in (Customer, Identity, Conversation, Message, ConversationEvent):
            table = model._meta.db_table
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f'(SELECT max(id) FROM "{table}"))'
            )
        t = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        loaded["analyze_s"] = time.perf_counter() - t
    print(
        f"loaded with COPY in {loaded['copy_s']:.0f} s, {len(indexes)} indexes built in "
        f"{loaded['index_s']:.0f} s, VACUUM ANALYZE {loaded['analyze_s']:.0f} s; "
        f"fill total {time.perf_counter() - started:.0f} s"
    )
    # What to search for, picked from the data so each query has a known selectivity.
    counts = Counter(stream)
    rare = [w for w, c in counts.items() if c in (2, 3) and w not in WORDS][:20]
    return {
        "common": ["pedido", "refund", "livraison", "factura"],
        "rare": rare,
        "phones": [p[-6:] for p in rng.sample(phones, 20)],
        "names": [n for n in rng.sample(names, 40) if n][:20],
        "visible_by_team": {
            t: rng.sample(v, min(2000, len(v))) for t, v in visible_by_team.items()
        },
        "assigned_to": {u: rng.sample(v, min(200, len(v))) for u, v in assigned_to.items()},
    }


def load_plan_from_db() -> dict:
    """The same search terms and visible conversations, read back from a filled database."""
    from conversations.models import Conversation, Customer, Identity

    rng = random.Random(11)
    phones = list(
        Identity.objects.filter(kind="sms").order_by("?").values_list("address", flat=True)[:20]
    )
    names = list(
        Customer.objects.exclude(name="").order_by("?").values_list("name", flat=True)[:20]
    )
    rare = json.loads((REPO / "var" / "bench_inbox_terms.json").read_text())["rare"]
    visible_by_team, assigned_to = {}, {}
    distinct = Conversation.objects.order_by().values_list  # no ordering column in DISTINCT
    team_ids = sorted(t for t in distinct("team_id", flat=True).distinct() if t)
    for index, team_id in enumerate(team_ids):
        numbers = list(
            Conversation.objects.filter(team_id=team_id).values_list("pk", flat=True)[:20000]
        )
        visible_by_team[index] = rng.sample(numbers, min(2000, len(numbers)))
    for user_id in distinct("assignee_id", flat=True).distinct():
        if user_id:
            numbers = list(
                Conversation.objects.filter(assignee_id=user_id).values_list("pk", flat=True)[:200]
            )
            assigned_to[user_id] = numbers
    return {
        "common": ["pedido", "refund", "livraison", "factura"],
        "rare": rare,
        "phones": [p[-6:] for p in phones],
        "names": names,
        "visible_by_team": visible_by_team,
        "assigned_to": assigned_to,
    }


# --- Load ------------------------------------------------------------------------------------


def sessions(count: int) -> list[dict]:
    """Logged-in sessions for the admin and count-1 agents, as the login view would make."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    from helpdesk.models import User
    from routing.models import Team, TeamMembership

    team_index = {t.pk: i for i, t in enumerate(Team.objects.order_by("pk"))}
    users = list(User.objects.order_by("email")[:count])
    made = []
    for user in users:
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.create()
        made.append(
            {
                "user": user.pk,
                "admin": user.is_admin,
                "cookie": f"sessionid={store.session_key}",
                "teams": [
                    team_index[t]
                    for t in TeamMembership.objects.filter(user=user).values_list(
                        "team_id", flat=True
                    )
                ],
            }
        )
    return made


def requests_for(plan: dict, agents: list[dict], rng: random.Random) -> list[tuple]:
    """One agent's next request: (kind, label, path, cookie)."""
    admin = next(a for a in agents if a["admin"])
    filters = [
        ("status=pending", "status"),
        ("channel=sms", "channel"),
        ("priority=3", "priority"),
        ("tag=refund", "tag"),
        ("status=any&channel=email", "status+channel"),
        ("sort=waiting", "sort waiting"),
    ]

    def one(phase: str):
        agent = rng.choice(agents)
        roll = 0.88 + rng.random() * 0.12 if phase == "admin" else rng.random() * 0.88
        views = (
            ["all", "mine", "unassigned", "teams"]
            if agent["admin"]
            else [
                "mine",
                "unassigned",
                "teams",
            ]
        )
        view = rng.choice(views)
        if roll < 0.25:
            return ("list", f"list {view}", f"/inbox/?view={view}", agent["cookie"])
        if roll < 0.45:
            query, name = rng.choice(filters)
            return (
                "list_filtered",
                f"list {view} {name}",
                f"/inbox/?view={view}&{query}",
                agent["cookie"],
            )
        if roll < 0.50:
            return ("list_filtered", f"list {view} page 2", ("page2", view), agent["cookie"])
        if roll < 0.65:
            family = rng.choice(["common", "rare", "phones", "names"])
            term = rng.choice(plan[family])
            view = "all" if agent["admin"] else "teams"
            extra = "&status=any" if rng.random() < 0.5 else ""
            return (
                "search",
                f"search {family}",
                f"/inbox/?view={view}&q={quote(term)}{extra}",
                agent["cookie"],
            )
        if roll < 0.88:
            if agent["admin"] or not agent["teams"]:
                pool = plan["visible_by_team"][rng.randrange(5)]
            elif rng.random() < 0.5 and plan["assigned_to"].get(agent["user"]):
                pool = plan["assigned_to"][agent["user"]]
            else:
                pool = plan["visible_by_team"][rng.choice(agent["teams"])]
            return ("conversation", "conversation", f"/inbox/{rng.choice(pool)}/", agent["cookie"])
        if rng.random() < 0.5:
            return (
                "admin",
                "admin changelist",
                "/admin/conversations/conversation/",
                admin["cookie"],
            )
        term = rng.choice(plan["names"] + plan["common"])
        return (
            "admin",
            "admin changelist q",
            f"/admin/conversations/conversation/?{urlencode({'q': term})}",
            admin["cookie"],
        )

    return one


PAGER = re.compile(rb'class="pager"><a href="\?([^"]+)"')


def measure(port: int, plan: dict, agents: list[dict], args) -> dict:
    rng = random.Random(3)
    next_request = requests_for(plan, agents, rng)
    results = defaultdict(list)  # label -> [(kind, ms, status)]

    async def run():
        connections = Connections("127.0.0.1", port)
        for _ in range(300):
            try:
                await connections.request("GET", "/healthz")
                break
            except OSError:
                await asyncio.sleep(0.1)
        # The keyset cursor of each agent's second page, as the "Older" link gives it.
        second_pages = {}
        for agent in agents:
            for view in ("mine", "unassigned", "teams", "all"):
                status, body = await connections.request(
                    "GET", f"/inbox/?view={view}", headers={"Cookie": agent["cookie"]}
                )
                assert status == 200, (status, body[:200])
                if found := PAGER.search(body):
                    second_pages[agent["cookie"], view] = "/inbox/?" + html.unescape(
                        found.group(1).decode()
                    )
        for _ in range(60):  # warm up caches and the pool
            kind, label, path, cookie = next_request(rng.choice(["inbox", "admin"]))
            if isinstance(path, tuple):
                continue
            await connections.request("GET", path, headers={"Cookie": cookie})

        nonlocal started
        started = time.perf_counter()

        async def agent_loop(phase, deadline):
            # Each agent is mid-thought as a phase begins, as in a working day: no burst of 20
            # requests at once.
            await asyncio.sleep(rng.expovariate(1 / args.think) if args.think else 0)
            while time.perf_counter() < deadline:
                kind, label, path, cookie = next_request(phase)
                if isinstance(path, tuple):
                    path = second_pages.get((cookie, path[1]))
                    if path is None:
                        continue
                started = time.perf_counter()
                status, _ = await connections.request("GET", path, headers={"Cookie": cookie})
                results[label].append((kind, (time.perf_counter() - started) * 1000, status))
                if args.think:
                    await asyncio.sleep(rng.expovariate(1 / args.think))

        for _ in range(2):
            for phase, share in (("inbox", 0.375), ("admin", 0.125)):
                deadline = time.perf_counter() + args.seconds * share
                await asyncio.gather(*(agent_loop(phase, deadline) for _ in range(args.agents)))

    started = 0.0
    asyncio.run(run())
    return results, time.perf_counter() - started


def report(results: dict, seconds: float) -> dict:
    by_kind = defaultdict(list)
    total = bad = 0
    print(f"\n{'request':34} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for label in sorted(results):
        rows = results[label]
        times = [ms for _, ms, _ in rows]
        bad += sum(status != 200 for _, _, status in rows)
        total += len(rows)
        by_kind[rows[0][0]].extend(times)
        print(
            f"{label:34} {len(times):5} {statistics.median(times):8.1f} "
            f"{percentile(times, 0.95):8.1f} {max(times):8.1f}"
        )
    print(f"\n{'kind':34} {'n':>5} {'p50 ms':>8} {'p95 ms':>8}")
    figures = {}
    for kind in ("list", "list_filtered", "search", "conversation", "admin"):
        times = by_kind[kind]
        figures[kind] = (statistics.median(times), percentile(times, 0.95))
        print(f"{kind:34} {len(times):5} {figures[kind][0]:8.1f} {figures[kind][1]:8.1f}")
    print(f"{total} requests in {seconds:.0f} s ({total / seconds:.1f}/s), non-200: {bad}")
    return figures, bad


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=90)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--think", type=float, default=1.0, help="mean think time, seconds")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn processes")
    parser.add_argument("--reuse", action="store_true", help="measure the previous fill")
    args = parser.parse_args()

    port = free_port()
    db_url = PG_URL + DB_NAME if args.reuse else fresh_pg_database(DB_NAME)
    env = {
        "DATABASE_URL": db_url,
        "DATABASE_POOL": "false",  # this process only fills; the server uses the pool
        "REDIS_URL": REDIS_URL,
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
    }
    migrate_and_setup(env)
    terms = REPO / "var" / "bench_inbox_terms.json"
    if args.reuse:
        plan = load_plan_from_db()
    else:
        plan = fill(db_url, args.conversations)
        terms.parent.mkdir(exist_ok=True)
        terms.write_text(json.dumps({"rare": plan["rare"]}))
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        conn.execute("DELETE FROM django_session")
    agents = sessions(args.agents)
    from django.db import connection

    connection.close()

    env.pop("DATABASE_POOL")
    os.environ.pop("DATABASE_POOL")  # the server's processes use their own pools
    server = uvicorn(
        "helpdesk.asgi:application", port, env, bench_module=False, workers=args.workers
    )
    try:
        results, seconds = measure(port, plan, agents, args)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)

    figures, _ = report(results, seconds)
    list_p95 = max(figures["list"][1], figures["list_filtered"][1])
    admin_p95 = figures["admin"][1]
    print(
        f"RESULT inbox list_p95_ms={list_p95:.1f} search_p95_ms={figures['search'][1]:.1f} "
        f"conversation_p95_ms={figures['conversation'][1]:.1f} admin_p95_ms={admin_p95:.1f} "
        f"ratio={list_p95 / admin_p95:.2f}"
    )


if __name__ == "__main__":
    main()
