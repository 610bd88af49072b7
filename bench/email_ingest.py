"""Email ingestion, end to end: store raw -> parse -> thread -> store, messages per second.

Contestants, on the same generated corpus, each in its own process, in one run:
  threadline  `channels_adapters.email.ingest(..., process_now=True)` (what the MTA pipe and
              the IMAP poller's task do), on SQLite and on PostgreSQL
  ceiling     stdlib parse (policy.default, body extraction) + one INSERT and commit per message,
              on the same database kinds: no threading, no customers, no dedupe
  peer        django-helpdesk 2.6 (the direct Python peer) through its own email processing
              (`helpdesk.email.extract_email_metadata`, what its mailbox poller calls per message),
              in a separate virtualenv, on SQLite and on PostgreSQL
Then the peak memory (RSS growth) of ingesting one mail with a 20 MB attachment.

Targets (issue "Email channel"): >= 10x the peer and >= 50% of the ceiling; peak memory for the
20 MB attachment under 3x its size.

    python bench/email_ingest.py [--messages 5000] [--no-postgres]
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from harness import fresh_pg_database

REPO = Path(__file__).resolve().parent.parent
PEER_VENV = Path(os.environ.get("PEER_VENV", "/tmp/threadline-bench-django-helpdesk"))

PHRASES = {
    "en": [
        "My order has not arrived yet.",
        "Can you check my invoice?",
        "The app crashes when I log in.",
        "I would like a refund for the last purchase.",
        "Thanks for the quick help!",
    ],
    "pt": [
        "Meu pedido ainda não chegou.",
        "Podem verificar a minha fatura?",
        "O aplicativo fecha quando entro.",
        "Gostaria de um reembolso.",
        "Obrigado pela ajuda rápida!",
    ],
    "fr": [
        "Ma commande n'est pas encore arrivée.",
        "Pouvez-vous vérifier ma facture ?",
        "L'application plante à la connexion.",
        "Je voudrais un remboursement.",
        "Merci pour l'aide rapide !",
    ],
    "es": [
        "Mi pedido aún no ha llegado.",
        "¿Pueden revisar mi factura?",
        "La aplicación se cierra al entrar.",
        "Quisiera un reembolso.",
        "¡Gracias por la ayuda rápida!",
    ],
}
ATTRIBUTION = {
    "en": "On {d}, {n} <{a}> wrote:",
    "pt": "Em {d}, {n} <{a}> escreveu:",
    "fr": "Le {d}, {n} <{a}> a écrit :",
    "es": "El {d}, {n} <{a}> escribió:",
}


# --- The corpus -----------------------------------------------------------------------------


def make_corpus(directory: Path, count: int) -> None:
    """New threads, replies quoting earlier messages (In-Reply-To/References), HTML
    alternatives, attachments; four languages; ~800 senders. The same seed, the same corpus."""
    rng = random.Random(1234)
    sent: list[tuple[str, str, str, str]] = []  # (message-id, subject, sender, language)
    when = 1_790_000_000
    for i in range(count):
        when += rng.randint(5, 90)
        reply = sent and rng.random() < 0.35
        if reply:
            parent_id, subject, sender, lang = rng.choice(sent[-400:])
        else:
            lang = rng.choice(list(PHRASES))
            n = rng.randint(1, 800)
            sender = f"customer{n}@example{n % 7}.com"
            subject = f"{rng.choice(PHRASES[lang])[:30]} #{i}"
            parent_id = None
        body = " ".join(rng.choice(PHRASES[lang]) for _ in range(rng.randint(1, 6)))
        if reply:
            quote = "\n".join("> " + rng.choice(PHRASES[lang]) for _ in range(rng.randint(2, 12)))
            attribution = ATTRIBUTION[lang].format(
                d="Mon, 23 Nov 2026 10:00", n="Acme Support", a="support@acme.example"
            )
            body = f"{body}\n\n{attribution}\n{quote}\n"
        mail = EmailMessage()
        mail["From"] = f"Customer {sender.split('@')[0]} <{sender}>"
        mail["To"] = "Acme Support <support@acme.example>"
        mail["Subject"] = f"Re: {subject}" if reply else subject
        mail["Date"] = format_datetime(
            __import__("datetime").datetime.fromtimestamp(when, __import__("datetime").timezone.utc)
        )
        message_id = make_msgid(idstring=str(i), domain=sender.split("@")[1])
        mail["Message-ID"] = message_id
        if parent_id:
            mail["In-Reply-To"] = parent_id
            mail["References"] = parent_id
        mail.set_content(body)
        if rng.random() < 0.5:
            paragraphs = "".join(f"<p>{line}</p>" for line in body.split("\n") if line)
            mail.add_alternative(
                f"<html><body><div dir='ltr'>{paragraphs}</div></body></html>", subtype="html"
            )
        if rng.random() < 0.08:
            size = rng.randint(20_000, 200_000)
            mail.add_attachment(
                rng.randbytes(size),
                maintype="application",
                subtype="octet-stream",
                filename=f"log-{i}.bin",
            )
        sent.append((message_id, subject, sender, lang))
        (directory / f"{i:06d}.eml").write_bytes(mail.as_bytes())


def big_mail(directory: Path) -> Path:
    mail = EmailMessage()
    mail["From"], mail["To"] = "big@example.com", "support@acme.example"
    mail["Subject"], mail["Message-ID"] = "Big attachment", make_msgid(domain="example.com")
    mail.set_content("See the attached dump.")
    mail.add_attachment(
        random.Random(7).randbytes(20 * 1024 * 1024),
        maintype="application",
        subtype="octet-stream",
        filename="dump.bin",
    )
    path = directory / "big.eml"
    path.write_bytes(mail.as_bytes())
    return path


# --- Workers: each runs in its own process and prints one JSON line -------------------------


def proc_status(key: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def corpus_files(corpus: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(corpus.glob("0*.eml"))]


def worker_threadline(corpus: Path, database_url: str, memory_only: bool) -> dict:
    sys.path.insert(0, str(REPO))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="helpdesk.settings",
        DEBUG="false",
        LOG_LEVEL="WARNING",
        THREADLINE_VAR_DIR=str(corpus.parent / f"var-{os.getpid()}"),
    )
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    Path(os.environ["THREADLINE_VAR_DIR"]).mkdir()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from channels_adapters.email.ingest import ingest
    from conversations.models import Channel, Inbox

    inbox = Inbox.objects.create(name="Support", kind=Channel.EMAIL, address="support@acme.example")
    if memory_only:
        ingest(inbox, (corpus / "000000.eml").read_bytes(), process_now=True)  # warm up
        # Reset the kernel's high-water mark, so that the peak we read is this mail's alone;
        # the raw bytes in hand count too, as a pipe must read them.
        Path("/proc/self/clear_refs").write_text("5")
        before = proc_status("VmRSS")
        raw = (corpus / "big.eml").read_bytes()
        event = ingest(inbox, raw, process_now=True).event
        peak = proc_status("VmHWM") - before
        assert event.message.attachments.get().size == 20 * 1024 * 1024
        return {"rss_growth_bytes": peak, "raw_bytes": len(raw)}
    files = corpus_files(corpus)
    started = time.perf_counter()
    for raw in files:
        ingest(inbox, raw, process_now=True)
    elapsed = time.perf_counter() - started
    from conversations.models import Conversation, Message

    return {
        "messages": len(files),
        "seconds": elapsed,
        "stored": Message.objects.count(),
        "conversations": Conversation.objects.count(),
    }


def worker_ceiling(corpus: Path, database_url: str) -> dict:
    from email import policy
    from email.parser import BytesParser

    if database_url:
        import psycopg

        conn = psycopg.connect(database_url)
        placeholder = "%s"
        conn.execute(
            "CREATE TABLE m (id serial PRIMARY KEY, message_id text, sender text, "
            "subject text, body text)"
        )
    else:
        import sqlite3

        conn = sqlite3.connect(corpus.parent / f"ceiling-{os.getpid()}.sqlite3")
        conn.execute("PRAGMA journal_mode=WAL")
        placeholder = "?"
        conn.execute(
            "CREATE TABLE m (id integer PRIMARY KEY, message_id text, sender text, "
            "subject text, body text)"
        )
    conn.commit()
    insert = (
        f"INSERT INTO m (message_id, sender, subject, body) VALUES ({', '.join([placeholder] * 4)})"
    )
    parser = BytesParser(policy=policy.default)
    files = corpus_files(corpus)
    started = time.perf_counter()
    for raw in files:
        msg = parser.parsebytes(raw)
        body = msg.get_body(("plain", "html"))
        conn.execute(
            insert,
            (msg["Message-ID"], msg["From"], msg["Subject"], body.get_content() if body else ""),
        )
        conn.commit()
    return {"messages": len(files), "seconds": time.perf_counter() - started}


def worker_peer(corpus: Path, database_url: str) -> dict:
    import logging

    import django
    from django.conf import settings

    work = corpus.parent / f"peer-{os.getpid()}"
    work.mkdir()
    # Its emails link to ticket pages, so its URLs must be mounted under their namespace.
    (work / "peer_urls.py").write_text(
        "from django.urls import include, path\n"
        "urlpatterns = [path('helpdesk/', include('helpdesk.urls', namespace='helpdesk'))]\n"
    )
    sys.path.insert(0, str(work))
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(work / "db.sqlite3")}
    if database_url:
        from urllib.parse import urlparse

        url = urlparse(database_url)
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": url.path.lstrip("/"),
            "USER": url.username or "",
            "HOST": url.hostname,
            "PORT": url.port or 5432,
        }
    settings.configure(
        SECRET_KEY="bench",
        DEBUG=False,
        USE_TZ=True,
        SITE_ID=1,
        ROOT_URLCONF="peer_urls",
        HELPDESK_TEAMS_MODE_ENABLED=False,  # its default needs pinax-teams, not installed
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.sites",
            "django.contrib.messages",
            "django.contrib.humanize",
            "rest_framework",
            "helpdesk",
        ],
        DATABASES={"default": database},
        MEDIA_ROOT=str(work / "media"),
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {"context_processors": []},
            }
        ],
    )
    django.setup()
    from django.core.management import call_command
    from django.utils.encoding import force_str

    call_command("migrate", verbosity=0)
    from helpdesk.email import extract_email_metadata

    from helpdesk.models import FollowUp, Queue, Ticket

    queue = Queue.objects.create(
        title="Support",
        slug="support",
        allow_email_submission=True,
        email_address="support@acme.example",
    )
    logger = logging.getLogger("peer")
    logger.setLevel(logging.ERROR)
    files = corpus_files(corpus)
    failures = 0
    started = time.perf_counter()
    for raw in files:
        try:
            # As its local-mailbox reader does: the message as text, undecodable bytes replaced.
            extract_email_metadata(
                message=force_str(raw, errors="replace"), queue=queue, logger=logger
            )
        except Exception as exc:  # noqa: BLE001 - counted: a message the peer could not take
            failures += 1
            if failures == 1:
                import traceback

                sys.stderr.write("".join(traceback.format_exception(exc))[-1500:])
    elapsed = time.perf_counter() - started
    return {
        "messages": len(files),
        "seconds": elapsed,
        "failures": failures,
        "tickets": Ticket.objects.count(),
        "followups": FollowUp.objects.count(),
    }


# --- Orchestration --------------------------------------------------------------------------


def run_worker(python, name, corpus, database_url="", extra=()):
    command = [
        str(python),
        __file__,
        "--worker",
        name,
        "--corpus",
        str(corpus),
        "--database-url",
        database_url,
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    if result.returncode:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ensure_peer_venv() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "django-helpdesk==2.6.*",
                "psycopg[binary]",
            ],
            check=True,
        )
    return python


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--worker")
    parser.add_argument("--corpus")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--memory", action="store_true")
    args = parser.parse_args()

    if args.worker:
        corpus = Path(args.corpus)
        worker = {
            "threadline": lambda: worker_threadline(corpus, args.database_url, args.memory),
            "ceiling": lambda: worker_ceiling(corpus, args.database_url),
            "peer": lambda: worker_peer(corpus, args.database_url),
        }[args.worker]
        print(json.dumps(worker()))
        return

    ours = Path(REPO / ".venv" / "bin" / "python")
    peer_python = ensure_peer_venv()
    subprocess.run([str(peer_python), "-m", "pip", "install", "-q", "psycopg[binary]"], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        make_corpus(corpus, args.messages)
        big_mail(corpus)
        size = sum(p.stat().st_size for p in corpus.glob("0*.eml"))
        print(f"corpus: {args.messages} messages, {size / 1e6:.1f} MB")

        legs = [("sqlite", "")]
        if not args.no_postgres:
            legs.append(("postgres", None))
        rates = {}
        for db, url in legs:
            for name, python in (("threadline", ours), ("ceiling", ours), ("peer", peer_python)):
                database_url = url if url is not None else fresh_pg_database(f"bench_email_{name}")
                result = run_worker(python, name, corpus, database_url)
                rate = result["messages"] / result["seconds"]
                rates[(db, name)] = rate
                details = {k: v for k, v in result.items() if k not in ("messages", "seconds")}
                print(f"{db:9} {name:10} {rate:8.0f} msg/s  {result['seconds']:7.1f} s  {details}")
        memory = run_worker(ours, "threadline", corpus, "", ["--memory"])
        factor = memory["rss_growth_bytes"] / (20 * 1024 * 1024)
        print(
            f"20 MB attachment: raw message {memory['raw_bytes'] / 1e6:.1f} MB, peak RSS "
            f"growth {memory['rss_growth_bytes'] / 1e6:.1f} MB = {factor:.2f}x the attachment"
        )

    figures = []
    for db, _ in legs:
        vs_peer = rates[(db, "threadline")] / rates[(db, "peer")]
        vs_ceiling = rates[(db, "threadline")] / rates[(db, "ceiling")]
        print(f"{db}: {vs_peer:.1f}x django-helpdesk, {vs_ceiling:.0%} of the ceiling")
        figures += [
            f"{db}_msgs_per_s={rates[(db, 'threadline')]:.0f}",
            f"{db}_vs_peer={vs_peer:.1f}",
            f"{db}_vs_ceiling={vs_ceiling:.2f}",
        ]
    print(
        f"RESULT email_ingest {' '.join(figures)} attachment_memory_x={factor:.2f} "
        f"ratio={rates[('sqlite', 'threadline')] / rates[('sqlite', 'peer')]:.1f}"
    )


if __name__ == "__main__":
    main()
