"""IMAP polling for email inboxes (imap-tools).

Inbox settings: `imap_host`, `imap_port` (993), `imap_ssl` (true), `imap_username`,
`imap_folder` (INBOX), `imap_after` ("seen", or "move:<folder>", made if missing); credentials:
`imap_password`. On the first connection, only the folder's unread mail of the last two weeks
comes in: the rest was dealt with in a mail program.

Each message is stored (committed) before it is marked seen or moved, and the last UID is
saved after that: a crash at any point re-reads at most one message, which the Message-ID
dedupe drops. A new UIDVALIDITY (the server renumbered the folder) starts over from the first
UID, safely for the same reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import DataError
from django.db.models import Q
from django.utils import timezone
from imap_tools import AND, MailBox, MailBoxUnencrypted

from channels_adapters.email.ingest import ingest
from channels_adapters.email.parsing import NotAnEmail
from channels_adapters.models import MailboxState

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=10)
BATCH = 200  # messages per poll; the next poll goes on where this one stopped
UNREADABLE_KEPT = 20  # the mails that could not be stored, remembered for health_of
# On its first connection, a mailbox's unread mail of this long ago comes in; the rest stays.
FIRST_LOOK_BACK = timedelta(days=14)


@dataclass
class PollResult:
    stored: int = 0
    duplicates: int = 0
    unreadable: list = field(default_factory=list)  # [{"uid", "reason", "at"}]
    left_alone: int = 0  # held when the mailbox was first connected, and read or old
    skipped: bool = False  # another worker holds the lease


def mailbox_poll(inbox) -> PollResult:
    state, _ = MailboxState.objects.get_or_create(inbox=inbox)
    now = timezone.now()
    leased = MailboxState.objects.filter(
        Q(poll_started_at__isnull=True) | Q(poll_started_at__lt=now - LEASE), pk=state.pk
    ).update(poll_started_at=now)
    if not leased:
        return PollResult(skipped=True)
    result = PollResult()
    try:
        _poll(inbox, state, result)
    except Exception as exc:  # noqa: BLE001 - any failure is recorded and shown as health
        log.warning("polling %s failed: %s", inbox, exc)
        MailboxState.objects.filter(pk=state.pk).update(
            poll_started_at=None,
            last_error=f"{type(exc).__name__}: {exc}"[:1000],
            last_error_at=timezone.now(),
            consecutive_failures=state.consecutive_failures + 1,
            # The poll went past them (last_uid): said now, or never.
            unreadable=(state.unreadable + result.unreadable)[-UNREADABLE_KEPT:],
        )
        raise
    MailboxState.objects.filter(pk=state.pk).update(
        poll_started_at=None,
        last_success_at=timezone.now(),
        consecutive_failures=0,
        last_error="",
        unreadable=(state.unreadable + result.unreadable)[-UNREADABLE_KEPT:],
    )
    return result


def mailbox_connect(inbox):
    config = inbox.settings or {}
    use_ssl = config.get("imap_ssl", True)
    port = int(config.get("imap_port", 993 if use_ssl else 143))
    cls = MailBox if use_ssl else MailBoxUnencrypted
    return cls(config["imap_host"], port, timeout=30).login(
        config.get("imap_username") or inbox.address,
        (inbox.credentials or {}).get("imap_password", ""),
        initial_folder=config.get("imap_folder", "INBOX"),
    )


def connections_check(inbox) -> list[tuple[bool, str]]:
    """Sign in to the email inbox's IMAP and SMTP servers as polling and sending do, and say
    how each went, (ok, what): the admin's check after typing the settings, before a poll or a
    reply finds out. Nothing is fetched or sent."""
    from channels_adapters.email.adapter import EmailAdapter

    config, said = inbox.settings or {}, []
    if config.get("imap_host"):
        where = f"IMAP {config['imap_host']}"
        try:
            with mailbox_connect(inbox) as mailbox:
                folder = mailbox.folder.get()
            said.append((True, f"{where}: signed in, folder {folder}."))
        except Exception as exc:  # noqa: BLE001 - whatever it is, the admin reads it
            said.append((False, f"{where}: {type(exc).__name__}: {exc}"))
    else:
        said.append((True, "IMAP: not set (mail comes in by the pipe command or HTTP)."))
    if config.get("smtp_host"):
        where = f"SMTP {config['smtp_host']}:{config.get('smtp_port', 587)}"
        connection = EmailAdapter.connection(inbox)
        try:
            connection.open()
            said.append(
                (True, f"{where}: connected" + (" and signed in." if connection.username else "."))
            )
        except Exception as exc:  # noqa: BLE001 - whatever it is, the admin reads it
            said.append((False, f"{where}: {type(exc).__name__}: {exc}"))
        finally:
            connection.close()
    else:
        said.append((True, "SMTP: not set (replies go through the server's EMAIL_HOST)."))
    return said


def _poll(inbox, state: MailboxState, result: PollResult) -> None:
    config = inbox.settings or {}
    folder = config.get("imap_folder", "INBOX")
    after = config.get("imap_after", "seen")
    with mailbox_connect(inbox) as mailbox:
        moved_to = after.partition(":")[2] if after.startswith("move:") else ""
        if moved_to and not mailbox.folder.exists(moved_to):
            # Else the first mail is stored, cannot be moved, and holds back all after it.
            mailbox.folder.create(moved_to)

        def take(uid: int) -> None:
            """Store one mail, then mark it seen or move it."""
            status, data = mailbox.client.uid("FETCH", str(uid), "(BODY.PEEK[])")
            raw = next((part[1] for part in data if isinstance(part, tuple)), None)
            if status != "OK" or raw is None:
                return
            try:
                stored = ingest(inbox, raw, process_now=False)
            except (NotAnEmail, DataError) as exc:
                # Left in the mailbox, unmarked, for a person to look at: one mail that
                # cannot be stored must not hold back every mail behind it.
                log.warning("%s: UID %s cannot be stored (%s); skipped", inbox, uid, exc)
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                result.unreadable.append(
                    {"uid": uid, "reason": reason, "at": timezone.now().isoformat()}
                )
                return
            result.duplicates += stored.duplicate
            result.stored += not stored.duplicate
            if moved_to:
                mailbox.move(str(uid), moved_to)
            else:
                mailbox.flag(str(uid), "\\Seen", True)

        uidvalidity = int(mailbox.folder.status(folder, ["UIDVALIDITY"])["UIDVALIDITY"])
        if state.uidvalidity is None:
            # Connected for the first time: what the mailbox already holds was dealt with in a
            # mail program, maybe years ago, and must open no conversations (nor get
            # acknowledgements). Only the recent unread mail comes in, and then everything
            # new. Until that is done, the next poll is a first connection again.
            held = [int(u) for u in mailbox.uids("ALL")]
            since = (timezone.now() - FIRST_LOOK_BACK).date()
            recent = sorted(int(u) for u in mailbox.uids(AND(seen=False, date_gte=since)))
            for uid in recent[:BATCH]:
                take(uid)
            if len(recent) <= BATCH:
                result.left_alone = len(set(held) - set(recent))
                MailboxState.objects.filter(pk=state.pk).update(
                    uidvalidity=uidvalidity, last_uid=max(held, default=0)
                )
                log.info("%s: first connected, %s mails left alone", inbox, result.left_alone)
            return
        if uidvalidity != state.uidvalidity:
            state.uidvalidity, state.last_uid = uidvalidity, 0
            MailboxState.objects.filter(pk=state.pk).update(uidvalidity=uidvalidity, last_uid=0)
        # "N:*" always includes the highest UID, even below N: filter on our side too.
        uids = sorted(map(int, mailbox.uids(f"UID {state.last_uid + 1}:*")))
        for uid in [u for u in uids if u > state.last_uid][:BATCH]:
            take(uid)
            state.last_uid = uid
            MailboxState.objects.filter(pk=state.pk).update(last_uid=uid)
