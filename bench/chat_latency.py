"""Live chat: how long a visitor's message takes to reach the agents' sockets.

One ASGI server (uvicorn, the production setup: PostgreSQL + Redis channel layer, no worker in
the process; --workers N processes behind one port) serves both contestants, in one run,
alternating:
  chat   N widget visitors on /ws/widget/<key>/, each sending one message a second (at its
         own phase within the second); the visitor path stores it (`message_receive`), acks it
         and publishes it; agents' sockets on /ws/agent/ (session cookie, members of the
         visitor's team) hear `{"type": "conversation", "event": "message", "message": id}`.
         Latency: the visitor's send -> each agent socket's receipt, matched by the message
         id the visitor's ack returns.
  floor  the same N sockets' worth of raw WebSocket echo on the same server (a bare ASGI app
         at /ws/bench-echo/, mounted by this module beside Threadline), each sending one
         frame of the same shape a second. Latency: send -> echo received.
Each level of N gets a fresh server; visitors are split into teams of --visitors-per-team,
each team with its own web-chat inbox and --agents-per-team agent sockets (an agent hears
every conversation of their teams, as the inbox list does). --watch subscribe also has each
agent socket subscribe to its share of its team's conversations, as open conversation pages
do. Every message must reach each agent socket of its team exactly once (checked by message
id), no other team's socket, and be stored once (checked by client id in the database). What
has not arrived 30 s after its phase ended counts as lost, and so does a message the server
never acked, e.g. because it closed the socket (each such close is reported with its code).

Also reported, from /proc: the server's CPU per message and memory per connected socket, the
client's own CPU and event-loop lag (one client process drives every socket: when it is busy
its lag is in both contestants' figures), and PostgreSQL's and Redis's CPU.

Target (the live chat issue): at 500 concurrent chats, p99 under 100 ms and within 3x the
floor's p99, and no message lost or duplicated.

    python bench/chat_latency.py [--visitors 100,500,1000] [--seconds 20]
        [--visitors-per-team 100] [--agents-per-team 2] [--watch team|subscribe] [--workers 1]
"""

import argparse
import asyncio
import json
import math
import os
import random
import signal
import statistics
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path

from harness import free_port, fresh_pg_database, migrate_and_setup, percentile, uvicorn

REPO = Path(__file__).resolve().parent.parent
ECHO_PATH = "/ws/bench-echo/"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
# The bench process signs the visitors' tokens: the server must check them with the same key.
SECRET_KEY = "bench-chat-latency-not-secret-0123456789abcdefghijklmnopqrstuvwxyz"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DRAIN_SECONDS = 30  # after a phase, how long answers may still arrive before they count lost
WARM_UP_SECONDS = 180  # the same for the warm-up, whose first messages open conversations
TEXT = "Hello, I ordered a blue jacket last week and it has not arrived yet, message {}"


# --- Measuring processes through /proc (psutil is not a dependency) -------------------------


def server_processes(pid: int) -> list[int]:
    """The processes that serve: uvicorn itself, or with --workers its worker processes (the
    parent only supervises them)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(child) for child in f.read().split()]
    return children or [pid]


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU of a process, all its threads (or only `thread`)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path) as f:
        parts = f.read().rpartition(")")[2].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def rss_mb(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    return total


def cpu_seconds_of(names: tuple[str, ...]) -> float:
    """CPU of every process on the machine with one of these names (PostgreSQL's backends,
    Redis): theirs, whoever's load it is, since the machine is shared. Includes the CPU of
    their children that exited (a backend the pool closed is counted by the postmaster)."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                text = f.read()
        except OSError:
            continue  # gone meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        if name in names:
            parts = text.rpartition(")")[2].split()
            total += sum(int(value) for value in parts[11:15]) / CLK_TCK
    return total


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent not idle (all cores)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


@dataclass
class Usage:
    """CPU counters at one instant, subtracted to give a phase's use."""

    server: float
    server_loop: float  # the server's main thread, which runs the event loop
    client: float
    stores: float  # PostgreSQL + Redis
    machine: float
    at: float

    @classmethod
    def now(cls, server_pids: list[int]) -> "Usage":
        times = os.times()
        return cls(
            server=sum(cpu_seconds(pid) for pid in server_pids),
            server_loop=sum(cpu_seconds(pid, pid) for pid in server_pids),
            client=times.user + times.system,
            stores=cpu_seconds_of(("postgres", "redis-server")),
            machine=machine_busy_seconds(),
            at=time.perf_counter(),
        )

    def __sub__(self, other: "Usage") -> "Usage":
        return Usage(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


# --- Setup: teams, web-chat inboxes, agents with sessions, visitors with tokens ------------


@dataclass
class TeamSetup:
    widget_key: str
    inbox_id: int
    sessions: list[str]  # one session key per agent
    tokens: list[str]  # one token per visitor


def create_level(level: int, visitors: int, per_team: int, agents_per_team: int) -> list:
    """The teams of one level, each with its own inbox, agents and visitors."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    from channels_adapters.webchat import chat
    from conversations.models import Channel, Inbox
    from helpdesk.models import User
    from routing.models import Team, TeamMembership

    teams = []
    for number in range(math.ceil(visitors / per_team)):
        name = f"chat-{level}-{number}"
        team = Team.objects.create(name=name, slug=name)
        inbox = Inbox.objects.create(name=name, kind=Channel.WEBCHAT, default_team=team)
        sessions = []
        for index in range(agents_per_team):
            user = User.objects.create_user(email=f"agent-{name}-{index}@bench.example")
            TeamMembership.objects.create(team=team, user=user)
            session = SessionStore()
            session[SESSION_KEY] = str(user.pk)
            session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
            session[HASH_SESSION_KEY] = user.get_session_auth_hash()
            session.create()
            sessions.append(session.session_key)
        size = min(per_team, visitors - number * per_team)
        tokens = [chat.visitor_token(chat.visitor_session(inbox=inbox)) for _ in range(size)]
        teams.append(TeamSetup(inbox.widget_key, inbox.pk, sessions, tokens))
    return teams


def stored_counts(inbox_ids: list[int], client_ids) -> dict[str, int]:
    """How many messages the database holds for each client id."""
    from django.db.models import Count

    from conversations.models import Message

    rows = (
        Message.objects.filter(inbox_id__in=inbox_ids, client_id__in=list(client_ids))
        .values("client_id")
        .annotate(n=Count("id"))
    )
    return {row["client_id"]: row["n"] for row in rows}


# --- The server under test --------------------------------------------------------------------


def start_server(port: int, env: dict, workers: int) -> subprocess.Popen:
    return uvicorn("chat_latency:application", port, env, workers=workers)


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# --- The client: one process, every socket -----------------------------------------------------


@dataclass
class Record:
    """What was sent when, and what arrived."""

    sent: dict = field(default_factory=dict)  # chat client id -> (send time, team)
    message_of: dict = field(default_factory=dict)  # chat client id -> stored message id
    acked_at: dict = field(default_factory=dict)  # chat client id -> when the ack came
    arrivals: dict = field(default_factory=lambda: defaultdict(list))  # message id -> [(agent, t)]
    refused: list = field(default_factory=list)  # the visitor path's error frames
    conversation_of: dict = field(default_factory=dict)  # message id -> conversation id
    echo_sent: dict = field(default_factory=dict)  # echo client id -> send time
    echo_latencies: list = field(default_factory=list)  # seconds
    lag: list = field(default_factory=list)  # the client's event-loop lag, seconds
    closed: Counter = field(default_factory=Counter)  # sockets the server closed, by how


async def connect_socket(url: str, origin: str, headers: dict | None = None):
    from websockets.asyncio.client import connect

    # No compression: it would cost the client as much CPU as the server spends on the
    # frames, and both contestants go without it.
    return await connect(
        url,
        origin=origin,
        additional_headers=headers,
        compression=None,
        proxy=None,
        ping_interval=None,
        open_timeout=120,
        close_timeout=5,
        max_queue=None,
    )


async def read_frames(ws, role: str, record: Record, handle):
    """Hand each frame and its arrival time to `handle`; note it if the server closes."""
    from websockets.exceptions import ConnectionClosed

    try:
        async for frame in ws:
            handle(time.perf_counter(), json.loads(frame))
    except ConnectionClosed as exc:
        how = f"{exc.rcvd.code} {exc.rcvd.reason}" if exc.rcvd else "without a close frame"
    else:
        how = "cleanly"
    record.closed[f"{role} socket closed by the server {how}"] += 1


def visitor_frames(record: Record):
    def handle(now, data):
        kind = data.get("type")
        if kind == "ack":
            record.message_of[data["client_id"]] = data["message"]
            record.acked_at[data["client_id"]] = now
        elif kind == "error":
            record.refused.append(data)

    return handle


def agent_frames(index: int, record: Record):
    def handle(now, data):
        if data.get("type") == "conversation" and "message" in data:
            record.arrivals[data["message"]].append((index, now))
            record.conversation_of[data["message"]] = data["conversation"]

    return handle


def echo_frames(record: Record):
    def handle(now, data):
        sent = record.echo_sent.pop(data["client_id"], None)
        if sent is not None:
            record.echo_latencies.append(now - sent)

    return handle


async def watch_lag(record: Record, stop: asyncio.Event):
    """How late the client's own event loop wakes up: its share of every latency."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        record.lag.append(time.perf_counter() - started - 0.01)


async def send_every_second(ws, prefix: str, start: float, until: float, on_send):
    """One frame a second, open loop (whatever the answers do), from `start` to `until`."""
    from websockets.exceptions import ConnectionClosed

    at, seq = start, 0
    while at < until:
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        client_id = f"{prefix}-{seq}"
        on_send(client_id)
        try:
            await ws.send(
                json.dumps({"action": "message", "client_id": client_id, "text": TEXT.format(seq)})
            )
        except ConnectionClosed:
            return  # counted by the reader; this frame counts as lost
        at, seq = at + 1.0, seq + 1


@dataclass
class Phase:
    name: str
    count: int  # frames sent
    usage: Usage
    lag: list


class Level:
    """The sockets of one level of N and the phases run on them."""

    def __init__(self, port: int, teams: list, agents_per_team: int, server_pids: list[int]):
        self.base = f"ws://127.0.0.1:{port}"
        self.origin = f"http://127.0.0.1:{port}"
        self.teams, self.agents_per_team, self.server_pids = teams, agents_per_team, server_pids
        self.record = Record()
        self.visitors, self.agents, self.echoes, self.readers = [], [], [], []
        self.visitor_team, self.agent_team = [], []
        self.rng = random.Random(7)

    async def open_echoes(self, count: int):
        limit = asyncio.Semaphore(50)

        async def one():
            async with limit:
                return await connect_socket(self.base + ECHO_PATH, self.origin)

        self.echoes = await asyncio.gather(*(one() for _ in range(count)))
        self.readers += [
            asyncio.create_task(read_frames(ws, "echo", self.record, echo_frames(self.record)))
            for ws in self.echoes
        ]

    async def open_agents(self):
        for number, team in enumerate(self.teams):
            for session in team.sessions:
                ws = await connect_socket(
                    self.base + "/ws/agent/", self.origin, {"Cookie": f"sessionid={session}"}
                )
                index = len(self.agents)
                self.agents.append(ws)
                self.agent_team.append(number)
                handle = agent_frames(index, self.record)
                self.readers.append(
                    asyncio.create_task(read_frames(ws, "agent", self.record, handle))
                )

    async def open_visitors(self):
        limit = asyncio.Semaphore(50)

        async def one(key, token):
            async with limit:
                ws = await connect_socket(f"{self.base}/ws/widget/{key}/", self.origin)
                await ws.send(json.dumps({"action": "hello", "token": token, "after": 0}))
                ready = json.loads(await ws.recv())
                assert ready["type"] == "ready", ready
                return ws

        pairs = [(n, t.widget_key, token) for n, t in enumerate(self.teams) for token in t.tokens]
        self.visitors = await asyncio.gather(*(one(key, token) for _, key, token in pairs))
        self.visitor_team = [number for number, _, _ in pairs]
        handle = visitor_frames(self.record)
        self.readers += [
            asyncio.create_task(read_frames(ws, "visitor", self.record, handle))
            for ws in self.visitors
        ]

    async def subscribe(self):
        """Each agent socket opens its share of its team's conversations."""
        for index, ws in enumerate(self.agents):
            team = self.agent_team[index]
            mine = [v for v, t in enumerate(self.visitor_team) if t == team]
            for visitor in mine[index % self.agents_per_team :: self.agents_per_team]:
                message = self.record.message_of[f"w{visitor}-0"]  # its warm-up message
                conversation = self.record.conversation_of[message]
                await ws.send(json.dumps({"action": "subscribe", "conversation": conversation}))

    def _pending_chat(self, client_ids) -> int:
        record, pending = self.record, 0
        refused = {frame.get("client_id") for frame in record.refused}
        for client_id in client_ids:
            if client_id in refused:
                continue
            message = record.message_of.get(client_id)
            if message is None:
                pending += 1
                continue
            heard = {agent for agent, _ in record.arrivals.get(message, ())}
            pending += len(heard) < self.agents_per_team
        return pending

    async def chat(self, tag: str, seconds: float, drain: float = DRAIN_SECONDS) -> Phase:
        """Every visitor sends one message a second for `seconds`; waits for the answers."""
        record = self.record

        def sender(index):
            team = self.visitor_team[index]

            def on_send(client_id):
                record.sent[client_id] = (time.perf_counter(), team)

            return on_send

        return await self._phase(
            "chat",
            self.visitors,
            tag,
            seconds,
            sender,
            self._pending_chat,
            drain,
        )

    async def floor(self, tag: str, seconds: float) -> Phase:
        record = self.record

        def sender(_index):
            def on_send(client_id):
                record.echo_sent[client_id] = time.perf_counter()

            return on_send

        return await self._phase(
            "floor",
            self.echoes,
            tag,
            seconds,
            sender,
            lambda ids: sum(client_id in record.echo_sent for client_id in ids),
            DRAIN_SECONDS,
        )

    async def _phase(self, name, sockets, tag, seconds, sender, pending, drain) -> Phase:
        sent_ids: list[str] = []

        def track(on_send):
            def both(client_id):
                sent_ids.append(client_id)
                on_send(client_id)

            return both

        lag_from = len(self.record.lag)
        before = Usage.now(self.server_pids)
        start = time.perf_counter() + 0.1
        await asyncio.gather(
            *(
                send_every_second(
                    ws,
                    f"{tag}{index}",
                    start + self.rng.random(),
                    start + seconds,
                    track(sender(index)),
                )
                for index, ws in enumerate(sockets)
            )
        )
        give_up = time.perf_counter() + drain
        while pending(sent_ids) and time.perf_counter() < give_up:
            await asyncio.sleep(0.25)
        return Phase(
            name, len(sent_ids), Usage.now(self.server_pids) - before, self.record.lag[lag_from:]
        )

    async def close(self):
        for task in self.readers:
            task.cancel()
        await asyncio.gather(
            *(ws.close() for ws in self.visitors + self.agents + self.echoes),
            return_exceptions=True,
        )


async def server_ready(base: str, origin: str):
    for _ in range(600):
        try:
            ws = await connect_socket(base + ECHO_PATH, origin)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        await ws.close()
        return
    raise RuntimeError("the server did not start")


async def probe(base: str, origin: str, team: TeamSetup):
    """One visitor's hello and message before memory is measured: the server's first use of
    each code path imports modules and fills caches, which no socket should be charged."""
    ws = await connect_socket(f"{base}/ws/widget/{team.widget_key}/", origin)
    await ws.send(json.dumps({"action": "hello", "token": team.tokens[0], "after": 0}))
    await ws.recv()
    await ws.send(json.dumps({"action": "message", "client_id": "probe", "text": "Hello?"}))
    while json.loads(await ws.recv())["type"] != "ack":
        pass
    await ws.close()


async def run_level(args, port: int, server_pid: int, teams: list) -> dict:
    """Connect, warm up, alternate the contestants; returns the level's figures."""
    visitors = sum(len(team.tokens) for team in teams)
    level = Level(port, teams, args.agents_per_team, [server_pid])
    stop = asyncio.Event()
    lag_task = asyncio.create_task(watch_lag(level.record, stop))
    await server_ready(level.base, level.origin)
    level.server_pids = server_pids = server_processes(server_pid)
    await probe(level.base, level.origin, teams[0])

    rss = {"start": rss_mb(server_pids)}
    await level.open_echoes(visitors)
    rss["echoes"] = rss_mb(server_pids)
    await level.open_agents()
    await level.open_visitors()
    rss["visitors"] = rss_mb(server_pids)

    # Warm up: every visitor's first message (this opens or continues its conversation), the
    # echo sockets' first frames; then the agents open their conversations if asked to.
    warm_chat = await level.chat("w", 1, WARM_UP_SECONDS)
    warm_floor = await level.floor("w", 1)
    print(
        f"  warm-up: {warm_chat.count} chat messages answered in "
        f"{warm_chat.usage.at:.1f} s, {warm_floor.count} echoes in {warm_floor.usage.at:.1f} s"
    )
    if args.watch == "subscribe":
        await level.subscribe()
        await asyncio.sleep(2)  # the subscriptions and their presence announcements
    measured_from = set(level.record.sent)
    level.record.echo_latencies.clear()

    phases = []
    for round_number in range(2):  # alternate, so drift on a shared machine hits both
        phases.append(await level.floor(f"f{round_number}-", args.seconds / 2))
        phases.append(await level.chat(f"c{round_number}-", args.seconds / 2))
    await asyncio.sleep(1)  # a duplicate would come right after the original
    rss["end"] = rss_mb(server_pids)
    stop.set()
    await lag_task
    await level.close()

    # Count: every measured message, each agent socket of its team, exactly once.
    record = level.record
    client_ids = [c for c in record.sent if c not in measured_from]
    refused = {frame.get("client_id") for frame in record.refused}
    latencies, acks, lost, duplicated, misrouted, unacked = [], [], 0, 0, 0, 0
    for client_id in client_ids:
        sent_at, team = record.sent[client_id]
        message = record.message_of.get(client_id)
        if message is None:
            unacked += 1
            lost += args.agents_per_team
            continue
        acks.append((record.acked_at[client_id] - sent_at) * 1000)
        arrivals = record.arrivals.get(message, [])
        first = {}
        for agent, at in arrivals:
            if level.agent_team[agent] != team:
                misrouted += 1
            elif agent in first:
                duplicated += 1
            else:
                first[agent] = at
        lost += args.agents_per_team - len(first)
        latencies += [(at - sent_at) * 1000 for at in first.values()]
    echoes_sent = sum(phase.count for phase in phases if phase.name == "floor")
    return {
        "visitors": visitors,
        "teams": len(teams),
        "agents": len(level.agents),
        "messages": len(client_ids),
        "latencies": latencies,
        "acks": acks,
        "lost": lost,
        "duplicated": duplicated,
        "misrouted": misrouted,
        "unacked": unacked,
        "refused": len(refused & set(client_ids)),
        "client_ids": client_ids,
        "floor_latencies": [s * 1000 for s in record.echo_latencies],
        "floor_lost": echoes_sent - len(record.echo_latencies),
        "phases": phases,
        "rss": rss,
        "closed": dict(record.closed),
    }


# --- Report ------------------------------------------------------------------------------------


def spread(values) -> str:
    if not values:
        return "no samples"
    return (
        f"p50 {statistics.median(values):.1f} ms  p99 {percentile(values, 0.99):.1f} ms  "
        f"max {max(values):.1f} ms"
    )


def usage_line(phases, name: str, answered: int) -> str:
    """CPU over the contestant's phases; per message answered (acked, echoed), which is the
    work done when the server falls behind and not every message sent is."""
    mine = [p for p in phases if p.name == name]
    seconds = sum(p.usage.at for p in mine)
    server = sum(p.usage.server for p in mine)
    loop = sum(p.usage.server_loop for p in mine)
    client = sum(p.usage.client for p in mine)
    stores = sum(p.usage.stores for p in mine)
    machine = sum(p.usage.machine for p in mine)
    lag = [s * 1000 for p in mine for s in p.lag]
    return (
        f"  {name:5} server CPU {server / seconds:4.0%} of a core ({loop / seconds:.0%} in the "
        f"event loop's thread, {(server - loop) / seconds:.0%} in others), "
        f"{server * 1000 / max(answered, 1):.2f} ms per message answered; "
        f"client CPU {client / seconds:4.0%} "
        f"(loop lag p99 {percentile(lag, 0.99):.1f} ms); "
        f"PostgreSQL + Redis {stores / seconds:4.0%}; "
        f"machine busy {machine / seconds:.2f} of {os.cpu_count()} cores "
        f"({seconds:.1f} s incl. draining)"
    )


def report(level: dict):
    n = level["visitors"]
    print(
        f"{n} visitors: {level['teams']} teams, {level['agents']} agent sockets, "
        f"{level['messages']} messages measured"
    )
    print(f"  chat  {len(level['latencies'])} agent receipts: {spread(level['latencies'])}")
    chat_seconds = sum(p.usage.at for p in level["phases"] if p.name == "chat")
    print(
        f"        visitor's ack: {spread(level['acks'])}; acked {len(level['acks'])} in "
        f"{chat_seconds:.1f} s incl. draining: {len(level['acks']) / chat_seconds:.0f} messages/s "
        f"handled, {n}/s offered"
    )
    print(
        f"        lost {level['lost']} (unacked {level['unacked']}, refused {level['refused']}), "
        f"duplicated {level['duplicated']}, to another team's agent {level['misrouted']}; "
        f"stored once {level['stored_once']}/{level['messages']}, "
        f"twice {level['stored_twice']}"
    )
    print(f"  floor {len(level['floor_latencies'])} echoes: {spread(level['floor_latencies'])}")
    print(f"        lost {level['floor_lost']}")
    for how, count in level["closed"].items():
        print(f"  {count} {how}")
    print(usage_line(level["phases"], "chat", len(level["acks"])))
    print(usage_line(level["phases"], "floor", len(level["floor_latencies"])))
    rss = level["rss"]
    print(
        f"  server memory: {rss['start']:.0f} MB at start, "
        f"+{(rss['echoes'] - rss['start']) * 1024 / n:.1f} KB per echo socket, "
        f"+{(rss['visitors'] - rss['echoes']) * 1024 / n:.1f} KB per visitor socket "
        f"(after hello; with {level['agents']} agent sockets), {rss['end']:.0f} MB at the end"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--visitors", default="100,500,1000", help="levels of N, comma-separated")
    parser.add_argument("--seconds", type=float, default=20, help="per contestant per level")
    parser.add_argument("--visitors-per-team", type=int, default=100)
    parser.add_argument("--agents-per-team", type=int, default=2)
    parser.add_argument("--watch", choices=("team", "subscribe"), default="team")
    parser.add_argument("--workers", type=int, default=1, help="server processes (uvicorn's)")
    args = parser.parse_args()
    levels = [int(n) for n in args.visitors.split(",")]

    env = {
        "DATABASE_URL": fresh_pg_database("threadline_bench_chat"),
        "REDIS_URL": REDIS_URL,
        "SECRET_KEY": SECRET_KEY,
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "EMBEDDED_WORKER": "false",
        "WEBCHAT_CONNECTIONS_PER_MINUTE": "1000000",
    }
    migrate_and_setup(env)
    import redis
    import uvloop

    broker = redis.Redis.from_url(REDIS_URL)
    print(
        f"{os.cpu_count()} cores (shared); {args.seconds:g} s per contestant per level in two "
        f"alternating rounds; teams of {args.visitors_per_team} visitors with "
        f"{args.agents_per_team} agent sockets each, watching by {args.watch}; "
        f"{args.workers} server process(es)"
    )
    results = []
    for n in levels:
        teams = create_level(n, n, args.visitors_per_team, args.agents_per_team)
        broker.flushdb()  # no worker runs: drop the tasks and groups of the previous level
        port = free_port()
        server = start_server(port, {**env, "PUBLIC_URL": f"http://127.0.0.1:{port}"}, args.workers)
        try:
            level = uvloop.run(run_level(args, port, server.pid, teams))
        finally:
            stop_server(server)
        # Stored exactly once, whatever the sockets said (the database is the record).
        stored = stored_counts([team.inbox_id for team in teams], level["client_ids"])
        level["stored_once"] = sum(stored.get(c) == 1 for c in level["client_ids"])
        level["stored_twice"] = sum(stored.get(c, 0) > 1 for c in level["client_ids"])
        report(level)
        results.append(level)
    broker.flushdb()

    print()
    print("| visitors | chat p50 / p99 | floor p50 / p99 | ratio | lost | duplicated |")
    print("|---|---|---|---|---|---|")
    for level in results:
        p99, floor_p99 = (percentile(level[k], 0.99) for k in ("latencies", "floor_latencies"))
        print(
            f"| {level['visitors']} | {statistics.median(level['latencies']):.1f} / {p99:.1f} ms "
            f"| {statistics.median(level['floor_latencies']):.1f} / {floor_p99:.1f} ms "
            f"| {p99 / floor_p99:.1f} | {level['lost']} | {level['duplicated']} |"
        )
    target = next((r for r in results if r["visitors"] == 500), results[-1])
    p50 = statistics.median(target["latencies"])
    p99 = percentile(target["latencies"], 0.99)
    floor_p99 = percentile(target["floor_latencies"], 0.99)
    print(
        f"RESULT chat_latency visitors={target['visitors']} p50_ms={p50:.1f} p99_ms={p99:.1f} "
        f"floor_p99_ms={floor_p99:.1f} lost={target['lost']} "
        f"duplicated={target['duplicated']} ratio={p99 / floor_p99:.2f}"
    )


if __name__ == "__main__":
    main()
else:
    # Imported by uvicorn as the application under test: Threadline plus the floor.
    from helpdesk.asgi import application as threadline

    async def echo(scope, receive, send):
        """The least a WebSocket server can do: accept, and send every text frame back."""
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (event := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": event.get("text")})

    async def application(scope, receive, send):
        if scope["type"] == "websocket" and scope["path"] == ECHO_PATH:
            await echo(scope, receive, send)
        else:
            await threadline(scope, receive, send)
