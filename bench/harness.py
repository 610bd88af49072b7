"""What the benchmark scripts share: a fresh PostgreSQL database, a free port, percentiles and
a hand-written keep-alive HTTP/1.1 client (a Python HTTP library costs about as much CPU per
request as the server it measures, on the same two cores)."""

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_pg_database(name: str) -> str:
    """An empty database `name` (dropped first, even if a previous run left sessions on it)."""
    import psycopg

    with psycopg.connect(PG_URL + "postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_URL + name


def migrate_and_setup(env: dict) -> None:
    """Point this process at the benchmark's database, migrate it and set Django up."""
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "helpdesk.settings")
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env={**os.environ}, check=True
    )
    sys.path.insert(0, str(REPO))
    import django

    django.setup()


def uvicorn(
    app: str, port: int, env: dict, *, bench_module: bool = True, workers: int = 1
) -> subprocess.Popen:
    """A quiet uvicorn process serving `app` ("module:application") on `port` with `env` on
    top of ours; `bench_module`: the module is a script of bench/ (Threadline plus its floor);
    `workers` > 1: that many server processes behind the port, uvicorn supervising them."""
    where = ["--app-dir", str(REPO / "bench")] if bench_module else []
    where += ["--workers", str(workers)] if workers > 1 else []
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, *where, "--port", str(port), "--lifespan", "on"]
        + ["--no-access-log", "--log-level", "warning"],
        cwd=REPO,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
    )


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Connections:
    """Keep-alive HTTP/1.1 connections to one server, reused as they come free."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.idle: list = []

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict | None = None
    ) -> tuple[int, bytes]:
        head = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        if method != "GET":
            head += f"Content-Length: {len(body)}\r\n"
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{head}\r\n".encode()
            + body
        )
        status_line = b""
        while not status_line:  # an idle connection the server closed: take another
            if self.idle:
                reader, writer = self.idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=2**20)
            writer.write(request)
            try:
                status_line = await reader.readline()
            except ConnectionError:
                continue
        length, chunked = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            answer = b""
            while size := int((await reader.readline()).strip(), 16):
                answer += await reader.readexactly(size)
                await reader.readline()
            await reader.readline()
        else:
            answer = await reader.readexactly(length)
        self.idle.append((reader, writer))
        return int(status_line.split()[1]), answer
