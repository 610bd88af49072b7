"""Raw RFC 822 bytes -> a ParsedEmail the adapter can thread. No database access here.

The stdlib `email` package: the MIME structure is read with the compat32 policy, which is
several times faster because it leaves headers as raw strings, and every header we use is then
parsed by the modern policy's header registry (RFC 2047 words, address lists, folding). Body
parts are decoded by hand rather than with `get_content()`, because real mail lies about its
charset: a part labelled utf-8 that is really windows-1252 must still become readable text.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import functools
import hashlib
import mimetypes
import quopri
import re
import tempfile
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.utils import getaddresses, parseaddr
from html.parser import HTMLParser

import charset_normalizer
from asn1crypto import cms
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.validators import validate_email

from channels_adapters.email.tnef import Unreadable, tnef_files
from conversations.services import HIDDEN_STYLE, InboundAttachment, sanitize_html

MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
AUTOMATED_SENDERS = re.compile(r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply)@", re.I)
MESSAGE_ID = re.compile(r"<([^<>\s]+)>")
# A mail inside the mail: message/global is one whose headers may be UTF-8 (RFC 6532).
FORWARDED_TYPES = ("message/rfc822", "message/global")


class NotAnEmail(ValueError):
    """The bytes are not an email message we can read."""


@dataclass
class Bounce:
    """A report about a mail we sent: a delivery status notification (RFC 3464) or a read
    receipt (RFC 8098). `status`: what it makes of the message ("failed", "delivered",
    "read"), or "" when it changes nothing (a delay, a relay, a receipt of a deletion)."""

    original_message_id: str
    reason: str
    status: str = "failed"
    reader: str = ""  # a read receipt's Final-Recipient: who read it
    failed_to: tuple[str, ...] = ()  # a delivery report's recipients it failed for, if named


@dataclass
class ParsedEmail:
    message_id: str  # without angle brackets; a hash of the bytes when the mail has none
    subject: str
    from_name: str
    from_address: str
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    references: list[str]  # In-Reply-To first, then References newest to oldest
    text: str  # the new text, quotes and signature split off
    quoted: str  # quoted history and signature, kept for a collapsible view
    html: str  # sanitised
    attachments: list[InboundAttachment] = field(default_factory=list)
    skipped_attachments: list[str] = field(default_factory=list)
    automated: str = ""  # why this is an auto-reply, list mail or loop; empty for a person
    auto_reply: bool = False  # automated, and not by a person through a list: asks nothing
    # Every X-Loop value, ours among them when the mail carries it: a forwarder (procmail, a
    # provider's rule) adds its own, above ours, so the first one alone may not be ours.
    loop_markers: list[str] = field(default_factory=list)
    bounce: Bounce | None = None
    language: str = ""
    # (name, address) of Reply-To when it names someone else than From: a contact form or a
    # list that rewrites From writes the person there.
    reply_to: tuple[str, str] | None = None
    delivered_to: list[str] = field(default_factory=list)
    forged: str = ""  # why the receiving server says From did not send it (DMARC failed)
    lists: list[str] = field(default_factory=list)  # the mailing lists it came through

    @property
    def recipients(self) -> list[str]:
        return [a for _, a in self.to + self.cc] + self.delivered_to


@dataclass(frozen=True)
class Envelope:
    message_id: str
    from_address: str
    subject: str
    body_digest: str  # the same mail by two paths has the same body, whatever its trace headers


def read_envelope(raw: bytes) -> Envelope:
    """Check that `raw` is an email and read what storing it needs, from the headers alone."""
    _require_content(raw)
    blank = BLANK_LINE.search(raw)
    msg = BytesHeaderParser(policy=policy.compat32).parsebytes(raw[: blank.end()] if blank else raw)
    _, from_address = _sender(msg)
    return Envelope(
        message_id=_message_id(msg, raw),
        from_address=from_address,
        subject=_header(msg, "Subject"),
        body_digest=_body_digest(raw, blank.end() if blank else len(raw)),
    )


def collision_key(message_id: str, digest: str) -> str:
    """The key (and the message's provider id) of a mail whose Message-ID another mail had:
    the id, a space (which no Message-ID holds) and its body's digest (see ingest)."""
    return f"{message_id[:200]} {digest[:32]}"


WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")  # what bytes.rstrip() takes off
DIGEST_CHUNK = 1 << 20


def _body_digest(raw: bytes, start: int) -> str:
    """What tells one mail from another under the same Message-ID: its body (from `start`),
    as any path brings it (a mailbox stores CRLF where a pipe passed LF, and may add a last
    newline). A megabyte at a time: copies of a 25 MB mail would be most of what ingesting it
    costs in memory."""
    end = len(raw)
    while end > start and raw[end - 1] in WHITESPACE:  # rstrip(), without the copy
        end -= 1
    digest = hashlib.sha256()
    while start < end:
        cut = min(start + DIGEST_CHUNK, end)
        if raw[cut - 1 : cut + 1] == b"\r\n":  # a CRLF stays in one piece
            cut += 1
        digest.update(raw[start:cut].replace(b"\r\n", b"\n"))
        start = cut
    return digest.hexdigest()


def _require_content(raw: bytes) -> None:
    if not raw or raw.isspace():  # isspace, not strip: no copy of a large mail
        raise NotAnEmail("the input is empty")


def _sender(msg) -> tuple[str, str]:
    """(name, address) of From, or NotAnEmail when `msg` does not read as an email."""
    name, address = _address(msg, "From")
    if not address or not any(h in msg for h in ("Date", "Message-ID", "Subject", "To")):
        raise NotAnEmail("no From address and no Date, Message-ID, Subject or To header")
    return name, address


def _message_id(msg, raw: bytes) -> str:
    """The Message-ID without brackets; for a mail without one, a hash of what its sender
    wrote (From, To, Cc, Date, Subject, body) and of its first hop, not of the mail as
    received: one that reached two of our addresses, each path adding its own trace headers,
    is one mail; the same words to two reply addresses are two."""
    if found := _first_id(_header(msg, "Message-ID")):
        return found
    blank = BLANK_LINE.search(raw)
    written = [_header(msg, name) for name in ("From", "To", "Cc", "Date", "Subject")]
    # And the first hop's Received, which both copies share and a resend a day later does
    # not (alerts from scripts repeat From, Subject and body, often with no Date).
    written += [_one_line(str(h)) for h in (msg.get_all("Received") or [])[-1:]]
    written.append(_body_digest(raw, blank.end() if blank else len(raw)))
    return "sha256-" + hashlib.sha256("\n".join(written).encode()).hexdigest()


# Base64 bodies larger than this are decoded to a temporary file before the stdlib parser sees
# the mail: it would otherwise hold the text as lines, as one string and decoded, all at once.
SPOOL_ABOVE = 512 * 1024
BASE64_CTE = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*base64[ \t]*\r?$")
BASE64_BODY = re.compile(rb"[A-Za-z0-9+/=\r\n]*")
SPOOL_MARKER = "threadline-spooled-part:"
BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def _spool_big_parts(raw: bytes) -> tuple[bytes, list]:
    """`raw` with every large base64 body replaced by a marker, and the decoded bodies as
    temporary files. Only bodies that are pure base64 data are cut, so a header quoted in some
    text part can never make us cut text."""
    cuts, files, pos = [], [], 0
    for match in BASE64_CTE.finditer(raw):
        if match.start() < pos:
            continue
        blank = BLANK_LINE.search(raw, match.end())
        if blank is None:
            break
        start = blank.end()
        end = raw.find(b"\n--", start)
        end = len(raw) if end < 0 else end + 1
        if end - start < SPOOL_ABOVE or BASE64_BODY.fullmatch(raw, start, end) is None:
            continue
        spooled = tempfile.TemporaryFile()
        view, leftover = memoryview(raw)[start:end], b""
        for offset in range(0, len(view), 4 * 1024 * 1024):
            chunk = leftover + bytes(view[offset : offset + 4 * 1024 * 1024]).translate(
                None, b"\r\n"
            )
            usable = len(chunk) - len(chunk) % 4
            spooled.write(binascii.a2b_base64(chunk[:usable]))
            leftover = chunk[usable:]
        if leftover.rstrip(b"="):
            spooled.write(binascii.a2b_base64(leftover + b"=" * (-len(leftover) % 4)))
        marker = base64.b64encode(f"{SPOOL_MARKER}{len(files)}".encode()) + b"\r\n"
        cuts.append((start, end, marker))
        files.append(spooled)
        pos = end
    if not cuts:
        return raw, []
    pieces, last = [], 0
    for start, end, marker in cuts:
        pieces += [raw[last:start], marker]
        last = end
    pieces.append(raw[last:])
    return b"".join(pieces), files


def parse_email(raw: bytes) -> ParsedEmail:
    _require_content(raw)
    small, spooled = _spool_big_parts(raw)
    msg = BytesParser(policy=policy.compat32).parsebytes(small)
    from_name, from_address = _sender(msg)

    texts, html_part, attachments, skipped = _walk(msg, spooled)
    text = _pieces_text(texts)
    if "begin " in text:
        text, files = _uuencoded_files(text)
        attachments += files
    raw_html = _decode(html_part) if html_part is not None else ""
    if not text and raw_html:
        text = html_to_text(raw_html)
    if not text.strip():  # nothing but a mail forwarded as an attachment: its text, to read
        forwarded = next((a for a in attachments if a.content_type in FORWARDED_TYPES), None)
        text = _forwarded_text(forwarded.content) if forwarded else ""
    subject = _header(msg, "Subject")
    new_text, quoted = split_reply(text, forward=bool(FORWARD_SUBJECT.match(subject)))

    message_id = _message_id(msg, raw)  # hashed as received, as read_envelope does
    reply_to = _address(msg, "Reply-To")
    automated = _automated(msg, from_address)
    references = _ids(_header(msg, "In-Reply-To")) + list(
        reversed(_ids(_header(msg, "References")))
    )
    return ParsedEmail(
        message_id=message_id,
        subject=subject,
        from_name=from_name,
        from_address=from_address,
        to=_addresses(msg, "To"),
        cc=_addresses(msg, "Cc"),
        references=list(dict.fromkeys(references)),
        text=new_text,
        quoted=quoted,
        html=sanitize_email_html(raw_html),
        attachments=attachments,
        skipped_attachments=skipped,
        automated=automated,
        auto_reply=bool(automated) and automated not in LIST_MAIL,
        loop_markers=[_one_line(v) for v in _header_values(msg, "X-Loop")],
        bounce=_bounce(msg) or _plain_bounce(from_address, text),
        language=_header(msg, "Content-Language").split(",")[0].strip()[:10],
        reply_to=reply_to if reply_to[1] not in ("", from_address) else None,
        delivered_to=[
            a.lower() for h in ("Delivered-To", "X-Original-To") for a in _raw_addrs(msg, h)
        ],
        forged=_dmarc_failed(msg, from_address),
        lists=_lists(msg),
    )


def _lists(msg) -> list[str]:
    """The addresses of the mailing lists a mail came through: where List-Post says to write,
    and the address its List-Id stands for ("users.lists.example" is users@lists.example)."""
    found = [
        address.lower()
        for value in _header_values(msg, "List-Post")
        for address in re.findall(r"<mailto:([^>?\s]+)", value, re.IGNORECASE)
    ]
    if list_id := MESSAGE_ID.search(_header(msg, "List-Id")):
        local, dot, domain = list_id.group(1).lower().partition(".")
        if dot and "." in domain:
            found.append(f"{local}@{domain}")
    return found


# --- Headers --------------------------------------------------------------------------------


def _modern(msg, name):
    """The header parsed by the modern policy (decoded words, structured addresses)."""
    values = _header_values(msg, name)
    if not values:
        return None
    return _parsed_header(name.lower(), values[0])


# Charset labels as mail programs write them, to the codec that reads what they really send:
# the web's encoding standard (WHATWG), as browsers do. Latin-1 is windows-1252 in practice
# (Outlook's quotes and euro sign in the 0x80-0x9f range), GB2312 is GBK, Thai Outlook says
# windows-874, Korean Outlook ks_c_5601-1987; some labels Python does not know at all.
CHARSET_ALIASES = {
    **dict.fromkeys(("iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "cp819"), "cp1252"),
    **dict.fromkeys(("gb2312", "gbk", "x-gbk", "gb_2312-80", "chinese", "csgb2312"), "gb18030"),
    **dict.fromkeys(("windows-874", "tis-620", "iso-8859-11", "x-windows-874"), "cp874"),
    **dict.fromkeys(("ks_c_5601-1987", "euc-kr", "x-windows-949", "korean"), "cp949"),
    **dict.fromkeys(("shift_jis", "shift-jis", "x-sjis", "sjis", "ms_kanji"), "cp932"),
    **dict.fromkeys(("iso-8859-8-i", "iso-8859-8-e", "logical", "visual"), "iso-8859-8"),
    **dict.fromkeys(("iso-8859-6-i", "iso-8859-6-e"), "iso-8859-6"),
    "iso-8859-9": "cp1254",
    "big5": "big5hkscs",
    "x-mac-roman": "mac-roman",
    "utf8": "utf-8",
}
HEADER_MAX_CHARS = 64 * 1024
FOLDING = re.compile(r"\r?\n(?=[ \t])")
ENCODED_WORD_CHARSET = re.compile(r"=\?([^?*]+)((?:\*[^?]*)?\?[bBqQ]\?)")


def _eight_bit_charset(msg) -> str:
    """What raw 8-bit headers that are not UTF-8 are written in: the body's charset (old
    mailers wrote both alike: KOI8-R, ISO-8859-2...), else windows-1252."""
    for part in msg.walk():
        codec = codec_for(part.get_content_charset() or "")
        if part.get_content_maintype() == "text" and codec not in ("", "us-ascii", "utf-8"):
            try:
                return codecs.lookup(codec).name
            except LookupError:
                break
    return "cp1252"


def codec_for(label: str) -> str:
    """The codec to read text labelled `label` with (CHARSET_ALIASES)."""
    label = (label or "").strip().strip('"').lower()
    return CHARSET_ALIASES.get(label, label)


def _header_values(msg, name: str) -> list[str]:
    """Every `name` header of `msg`, as text. A header in raw UTF-8 (RFC 6532: SMTPUTF8 mail,
    and many mailers' names and subjects) comes from compat32 as undecodable bytes, which
    str() turned into U+FFFD: "chloé@" became another address, so another customer. Read
    as UTF-8, else as windows-1252 (the 8-bit headers of older mailers)."""
    wanted, values = name.lower(), []
    for key, value in msg.raw_items():
        if key.lower() != wanted:
            continue
        # Unfolded (RFC 5322 2.2.3), as the modern parser expects its values: with the line
        # breaks in, a long name's encoded words stayed "=?utf-8?q?...?=" and a subject
        # folded between two of them read "Präsenta tion".
        value = FOLDING.sub("", str(value))
        if not value.isascii():
            value = _utf8_else(value.encode("utf-8", "surrogateescape"), _eight_bit_charset(msg))
        # A header beyond any real one's length (the parser's time grows with its square:
        # half a megabyte of encoded words took a minute) is read as far as that.
        value = value[:HEADER_MAX_CHARS]
        if "=?" in value:  # encoded words in the charset their bytes are really in
            value = ENCODED_WORD_CHARSET.sub(
                lambda m: f"=?{codec_for(m.group(1))}{m.group(2)}", value
            )
        values.append(value)
    return values


@functools.lru_cache(maxsize=2048)
def _parsed_header(name: str, value: str):
    # Kept: To and From repeat from mail to mail (and From is read twice per mail), and the
    # modern parser costs a tenth of a millisecond for an address. Header objects are
    # immutable strings.
    return policy.default.header_factory(name, value)


def _header(msg, name: str) -> str:
    if name not in msg:
        return ""
    try:
        value = _modern(msg, name)
    except Exception:  # noqa: BLE001 - a malformed header reads as absent, never crashes
        return ""
    return _one_line(str(value or ""))


def _one_line(value: str) -> str:
    """A header's text on one line. NUL, which an encoded word can carry and PostgreSQL
    cannot store, goes with the folding."""
    return re.sub(r"[\s\x00]+", " ", _undecoded_bytes_read(value)).strip()


UNDECODED = re.compile(r"[\ud800-\udfff]")


def _undecoded_bytes_read(value: str) -> str:
    """The parser leaves the bytes of an encoded word it could not decode (a charset it does
    not know, "unknown-8bit", a UTF-8 character split across two words) as lone surrogates,
    which no database can store: the mail never reached an agent. Read them as UTF-8 (the
    split character whole again), else windows-1252."""
    if not UNDECODED.search(value):
        return value
    # Two words' halves of one character come apart by the space the parser put between.
    value = re.sub(r"([\udc80-\udcff]) (?=[\udc80-\udcff])", r"\1", value)
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return UNDECODED.sub("\ufffd", value)
    return _utf8_else(data, "cp1252")


def _utf8_else(data: bytes, charset: str) -> str:
    """Bytes of a header as UTF-8 when they are, else in `charset`, which never fails."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode(charset, "replace")


def _raw_addrs(msg, name) -> list[str]:
    if name not in msg:
        return []
    values = []
    for value in _header_values(msg, name):
        values += [addr for _, addr in getaddresses([value]) if "@" in addr]
    return values


def _address(msg, name) -> tuple[str, str]:
    pairs = _addresses(msg, name)
    return pairs[0] if pairs else ("", "")


# Headers of which a mail has one: a second one is not read (the receiving server's DMARC
# check read the first From, if it read any: a second must not name the sender instead).
SINGLE_ADDRESS_HEADERS = ("from", "sender", "reply-to")


def _addresses(msg, name) -> list[tuple[str, str]]:
    """The (name, address) pairs of a `name` header; of To and Cc, of every one of them (a
    mail with two Cc headers copies everyone in both), as far as HEADER_MAX_CHARS in all."""
    if name not in msg:
        return []
    found, budget = [], HEADER_MAX_CHARS
    values = _header_values(msg, name)
    for value in values[:1] if name.lower() in SINGLE_ADDRESS_HEADERS else values:
        if budget <= 0:
            break
        found += _value_addresses(name.lower(), value[:budget])
        budget -= len(value)
    return [
        (_one_line(display)[:200], addr.replace("\x00", "").strip().lower())
        for display, addr in found
        if _plausible(addr)
    ]


def _value_addresses(name: str, value: str) -> list[tuple[str, str]]:
    """The standard parser's reading of an address header, and the lenient one's where that
    one cannot read it: a name with unquoted specials ("Max Kohl | ACME <max@...>") came out
    as the address '"Max Kohl |"', a name with no brackets ("Test test@example.com") as
    '"Test test"@example.com'. The standard parser also drops a name written the old way,
    as a comment ("marc@example.com (Marc Smith)"): the lenient one's is taken."""
    try:
        found = [(a.display_name, a.addr_spec) for a in _parsed_header(name, value).addresses]
    except Exception:  # noqa: BLE001 - the lenient parser below reads what it can
        found = []
    if found and all(_plausible(addr) for _, addr in found) and "(" not in value:
        return found
    try:
        lenient = [_name_apart(display, addr) for display, addr in getaddresses([value])]
    except RecursionError:  # thousands of nested comments: no address to be read there
        return found
    if found and all(_plausible(addr) for _, addr in found):  # only names to fill in
        named = {addr.lower(): display for display, addr in lenient if display}
        return [(display or named.get(addr.lower(), ""), addr) for display, addr in found]
    return lenient


def _name_apart(display: str, addr: str) -> tuple[str, str]:
    """ "Test test@example.com", read as one address: the name, and the word with the @."""
    words = addr.split()
    if len(words) < 2:
        return display, addr
    at = next((word for word in reversed(words) if "@" in word), addr)
    return display or " ".join(word for word in words if word is not at), at


def _plausible(addr: str) -> bool:
    """An address we can write to: a local part and a domain, no spaces, no quotes."""
    local, _, domain = addr.rpartition("@")
    return bool(local and domain) and not UNWRITABLE.search(addr)


UNWRITABLE = re.compile(r'[\s"]')


def _content_id(value) -> str:
    """A Content-ID, which some mailers write without its angle brackets."""
    value = str(value or "").replace("\x00", "").strip()
    return _first_id(value) or (value[:250] if value and not any(c in value for c in " <>") else "")


def _first_id(value: str) -> str:
    ids = _ids(value)
    return ids[0] if ids else ""


def _ids(value) -> list[str]:
    return [m[:250] for m in MESSAGE_ID.findall(str(value or "").replace("\x00", ""))]


# Reasons _automated gives for mail that people write through a list or a group: never
# answered automatically, but a person wrote it.
LIST_MAIL = ("Precedence: list", "List-Id header", "List-Unsubscribe header")


# The receiving server's DMARC verdict, one result of its Authentication-Results; and the
# policies it names there: Gmail's "(p=NONE sp=QUARANTINE dis=QUARANTINE)", OpenDMARC's
# "(p=none dis=none)", Microsoft's "action=oreject".
DMARC_FAIL = re.compile(r"\s*dmarc\s*=\s*fail\b", re.I)
POLICY = re.compile(r"\b(p|sp|dis|action)\s*=\s*([\w.-]+)", re.I)


def _dmarc_failed(msg: Message, sender: str) -> str:
    """Why the server that received the mail says its From is forged, or "". That server
    writes its Authentication-Results above all others; only a failure is believed, since
    anyone can write a header that says "pass" and not every server adds one.

    Not where the domain's policy is none, and only that: its owner tells receivers that some
    of its own mail fails (a newsletter tool, a server without DKIM, a forward that breaks
    SPF), and flagging it would flag honest customers every day until agents ignored the flag.
    The verdict is a result that begins "dmarc=fail"; other results repeat what the sender
    wrote (the envelope sender in spf=), and a sender could write more results in there, so
    the mail is flagged when any such result asks for more than none (see _strict), or says
    nothing of a policy. An ARC "pass" is not taken instead: anyone can seal a forged mail
    with a key of their own."""
    results = msg.get_all("Authentication-Results") or []
    if not results:
        return ""
    verdicts = [part for part in str(results[0]).split(";") if DMARC_FAIL.match(part)]
    if not any(_strict(verdict) for verdict in verdicts):
        return ""
    domain = sender.rpartition("@")[2]
    return (
        f"The receiving mail server found this mail did not come from {domain} (DMARC "
        f"failed): {sender} may not have written it. Check before sharing anything."
    )


def _strict(verdict: str) -> bool:
    """Whether a DMARC failure falls under a policy that asks receivers to act: the domain's
    (p=), Microsoft's word for the one it applied (action=), or the subdomains' (sp=) where
    the receiver acted on it (dis=): p=none with sp=quarantine is a domain in monitoring mode
    whose own mail is let through (dis=none). No policy named: strict."""
    named = {key.lower(): value.lower() for key, value in POLICY.findall(verdict)}
    if not named:
        return True
    return (
        named.get("p", "none") != "none"
        or named.get("action", "none") != "none"
        or (named.get("sp", "none") != "none" and named.get("dis", "none") != "none")
    )


def _automated(msg: Message, sender: str) -> str:
    """Why this mail must never get an automatic answer (RFC 3834 and common practice)."""
    auto_submitted = _header(msg, "Auto-Submitted").lower()
    if auto_submitted and auto_submitted != "no":
        return f"Auto-Submitted: {auto_submitted}"
    precedence = _header(msg, "Precedence").lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {precedence}"
    for name in (
        "X-Autoreply",
        "X-Autorespond",
        "X-Auto-Response-Suppress",
        # Vacation programs that predate RFC 3834 or ignore it (hosting panels, Notes,
        # FirstClass) mark what they send in a header of their own.
        "X-AutoReply-From",
        "X-Mail-Autoreply",
        "X-Autogenerated",
        "X-FC-MachineGenerated",
        "List-Id",
        "List-Unsubscribe",
    ):
        if msg.get(name) is not None:
            return f"{name} header"
    post_class = _header(msg, "X-POST-MessageClass")  # German hosters: "9; Autoresponder"
    if "autoresponder" in post_class.lower() or _header(msg, "Delivered-To") == "Autoresponder":
        return "autoresponder header"
    if AUTOMATED_SENDERS.match(sender):
        return f"automated sender {sender}"
    if msg.get_content_type() == "multipart/report":
        return "delivery report"
    return ""


def _bounce(msg: Message) -> Bounce | None:
    """A delivery status notification or a read receipt: which of our messages it is about,
    and what it says of it (see Bounce)."""
    if msg.get_content_type() != "multipart/report":
        return None
    reason, original, status, dsn, reader, failed_to = "", "", "", False, None, ()
    receipt = (msg.get_param("report-type") or "").lower() == "disposition-notification"
    for part in msg.walk():
        ctype = part.get_content_type()
        # The message/global-* ones are the same reports for mail with UTF-8 headers (RFC 6533).
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            dsn = True
            body = _payload_text(part)
            diagnostic = re.search(
                r"^Diagnostic-Code:\s*(?:smtp;)?\s*(.+(?:\n[ \t].+)*)", body, re.I | re.M
            )
            code = re.search(r"^Status:\s*((\d)\.\S*)", body, re.I | re.M)
            reason = re.sub(r"\s+", " ", diagnostic.group(1)).strip() if diagnostic else ""
            if code and not reason:
                reason = f"delivery status {code.group(1)}"
            actions = {a.lower() for a in re.findall(r"^Action:\s*(\S+)", body, re.I | re.M)}
            if not actions and code:  # no Action (it is required): the status class says
                actions = {{"5": "failed", "2": "delivered"}.get(code.group(2), "delayed")}
            # Each recipient's Action (RFC 3464 2.3.3): one failure fails the message (the
            # agent must know someone missed it); "delayed" (a 4xx, still being tried),
            # "relayed" and "expanded" say nothing yet.
            status = next((a for a in ("failed", "delivered") if a in actions), "")
            # Whom it failed for: each recipient's fields are a block of their own.
            failed_to = tuple(
                bare_address(who.group(1))
                for block in re.split(r"\r?\n[ \t]*\r?\n", body)
                if re.search(r"^Action:\s*failed", block, re.I | re.M)
                and (who := FINAL_RECIPIENT.search(block))
            )
        elif ctype in (
            "message/disposition-notification",
            "message/global-disposition-notification",
        ):
            receipt = True  # whatever report-type says, or does not
            body = _payload_text(part)
            reader = re.search(r"^Final-Recipient:\s*(?:rfc822;)?\s*(\S+)", body, re.I | re.M)
            found = re.search(r"^Original-Message-ID:\s*(<[^>]+>)", body, re.I | re.M)
            original = original or (_first_id(found.group(1)) if found else "")
            disposition = re.search(r"^Disposition:.*;\s*(\S+)", body, re.I | re.M)
            status = "read" if disposition and disposition.group(1).lower() == "displayed" else ""
            reason = disposition.group(0) if disposition else ""
        elif ctype in (*FORWARDED_TYPES, "text/rfc822-headers", "message/global-headers"):
            found = re.search(r"^Message-ID:\s*(<[^>]+>)", _payload_text(part), re.I | re.M)
            original = original or (_first_id(found.group(1)) if found else "")
    if not original:
        return None
    if not (receipt or dsn):  # a report with nothing more to say: a bounce, as it always was
        status = "failed"
    reason = reason or ("the message bounced" if status == "failed" else "")
    who = bare_address(reader.group(1)) if receipt and reader else ""
    return Bounce(
        original_message_id=original,
        reason=reason,
        status=status,
        reader=who,
        failed_to=failed_to if status == "failed" else (),
    )


# A recipient's address, after its type (rfc822; or RFC 6533's utf-8;).
FINAL_RECIPIENT = re.compile(r"^Final-Recipient:\s*(?:[\w-]+\s*;)?\s*(\S+)", re.I | re.M)
BOUNCE_SENDERS = re.compile(r"^(mailer-daemon|postmaster)@", re.I)
PERMANENT = re.compile(r"permanent|given up|giving up|\b5\.\d{1,3}\.\d{1,3}\b|#5\.\d", re.I)
STILL_TRYING = re.compile(
    r"temporar|delayed|will (keep|continue) trying|not yet been delivered", re.I
)
DELIVERY_CODE = re.compile(r"\b[45]\.\d{1,3}\.\d{1,3}\b|\b[45]\d\d[ -]")


def _plain_bounce(sender: str, text: str) -> Bounce | None:
    """A bounce written as plain text (qmail, older Exim and Sendmail, some hosted mail) that
    quotes the mail it returns: the Message-ID in that copy says which message of ours failed,
    the first line with a delivery status code says why. One that is still trying changes
    nothing; one that says it gave up fails, whatever temporary trouble it quotes."""
    if not BOUNCE_SENDERS.match(sender):
        return None
    found = re.search(r"^\s*Message-ID:\s*(<[^>]+>)", text, re.I | re.M)
    if not found:
        return None
    report = text[: found.start()]
    if STILL_TRYING.search(report) and not PERMANENT.search(report):
        return Bounce(original_message_id=_first_id(found.group(1)), reason="", status="")
    coded = [line.strip() for line in report.splitlines() if DELIVERY_CODE.search(line)]
    why = next((line for line in coded if PERMANENT.search(line)), None)
    why = why or next(iter(coded), "the message bounced")
    return Bounce(original_message_id=_first_id(found.group(1)), reason=why[:300])


def _encoded(part) -> str:
    """The transfer encoding of a message/* part that has one. RFC 6532 and 6533 let the UTF-8
    ones (message/global, a report's message/global-delivery-status) come in base64 or
    quoted-printable, which the parser does not undo: it reads the encoded text as a mail."""
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    return encoding if encoding in ("base64", "quoted-printable") else ""


def _inner_bytes(part) -> bytes | None:
    """The mail, or report, inside a message/* part, as it was before any transfer encoding."""
    payload = part.get_payload()
    if not isinstance(payload, list) or not payload:
        return None
    content = payload[0].as_bytes()
    if encoding := _encoded(part):
        # The parser took the encoded lines for a body with no headers, or for headers.
        content = content.lstrip(b"\r\n")
        decode = binascii.a2b_base64 if encoding == "base64" else quopri.decodestring
        try:
            content = decode(content)
        except (binascii.Error, ValueError):
            return None
    return content


def _payload_text(part) -> str:
    """Text of a report sub-part, whether the parser kept it as bytes or as a message."""
    payload = part.get_payload()
    if isinstance(payload, list):
        if _encoded(part):
            return (_inner_bytes(part) or b"").decode("utf-8", "replace")
        return "\n".join(str(p) for p in payload)
    if isinstance(payload, str):
        raw = part.get_payload(decode=True)
        return raw.decode("utf-8", "replace") if raw else payload
    return str(payload)


# --- Bodies ---------------------------------------------------------------------------------


def _leaves(part, parent=None, opened=None):
    """The parts of a mail that carry content, each with its parent (None for the mail
    itself). A message/* part (a mail forwarded as an attachment, a report) is one part: the
    parser reads one as a mail of its own, which is not this mail's text. An application/*
    part `opened` gives a mail for (a signed one) is that mail's parts."""
    maintype = part.get_content_maintype()
    if maintype == "application" and opened and (inner := opened(part)) is not None:
        yield from _leaves(inner, parent, opened)
        return
    if maintype == "message" or not part.is_multipart():
        yield part, parent
        return
    for child in part.get_payload():
        yield from _leaves(child, part, opened)


# S/MIME: a mail signed "opaque" (Outlook when not told to sign in clear text, signing
# gateways) is one file, smime.p7m, with the mail inside its signature.
PKCS7_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")


def _signed_mail(content: bytes) -> Message | None:
    """The mail an S/MIME signed-data file wraps, or None for anything else (an encrypted
    one, which only its recipient's key opens, stays the file it is). The signature is not
    checked: nothing here trusts a sender more for it."""
    try:
        signed = cms.ContentInfo.load(content)
        if signed["content_type"].native != "signed_data":
            return None
        inner = signed["content"]["encap_content_info"]["content"].native
    except Exception:  # noqa: BLE001 - asn1crypto parses lazily: any malformed DER, any error
        return None
    if not isinstance(inner, bytes) or not inner.strip():
        return None
    return BytesParser(policy=policy.compat32).parsebytes(inner)


def _content(part, spooled: list) -> bytes | File:
    """A leaf's decoded content; a large one set aside by _spool_big_parts, as its file."""
    content = part.get_payload(decode=True) or b""
    if content.startswith(SPOOL_MARKER.encode()):
        spooled_file = spooled[int(content[len(SPOOL_MARKER) :])]
        spooled_file.seek(0)
        return File(spooled_file)
    return content


def _walk(msg: Message, spooled: list):
    """The mail's text parts (the first, then any more a mail program put between its
    files), its HTML part, its attachments, and what was too big to keep."""
    texts: list = []
    html_part = None
    attachments: list[InboundAttachment] = []
    skipped: list[str] = []

    def keep(part, ctype: str, name: str) -> None:
        content = _content(part, spooled)
        size = content.size if isinstance(content, File) else len(content)
        if size > MAX_ATTACHMENT_BYTES:
            skipped.append(f"{name} ({size // (1024 * 1024)} MB, over the limit)")
            return
        attachment = InboundAttachment(
            filename=name,
            content_type=ctype,
            content=content,
            content_id=_content_id(part.get("Content-ID", "")),
        )
        if ctype == "application/ms-tnef" or name.lower() == "winmail.dat":
            attachments.extend(_unwrapped(attachment))
        else:
            attachments.append(attachment)

    signed_opened = []

    def opened(part) -> Message | None:
        """The mail inside an opaque-signed body: one layer of it, and only the mail's body,
        smime.p7m. A signed document attached to a mail (an Italian e-invoice, .xml.p7m) is
        a file the agent downloads, not the mail."""
        if part.get_content_type() not in PKCS7_TYPES or signed_opened:
            return None
        if (part.get_param("smime-type") or "signed-data").lower() != "signed-data":
            return None
        if (_filename(part) or "smime.p7m").lower() != "smime.p7m":
            return None
        content = _content(part, spooled)
        inner = _signed_mail(content.read() if isinstance(content, File) else content)
        if inner is None or "Content-Type" not in inner:
            return None
        signed_opened.append(part)
        return inner

    alternatives_read = set()  # the multipart/alternatives a text was taken from
    for part, parent in _leaves(msg, opened=opened):
        ctype = part.get_content_type()
        if ctype in FORWARDED_TYPES:
            _forwarded_keep(part, _filename(part), attachments, keep)
            continue
        if ctype.startswith("message/"):
            continue  # a bounce's or a read receipt's report, read by _bounce and _automated
        if part.get_content_maintype() == "multipart":  # no boundary: the parser kept it whole
            if not texts and (part.get_payload(decode=True) or b"").strip():
                texts.append(part)
            continue
        disposition = part.get_content_disposition()
        filename = _filename(part)
        if disposition != "attachment" and not filename and ctype.startswith("text/"):
            # The first text, and more between files: Apple Mail sends text, a photo, more
            # text, each text on its own or as an alternative of its own with its HTML.
            kind = parent.get_content_type() if parent is not None else ""
            further = kind == "multipart/mixed" or (
                kind == "multipart/alternative" and id(parent) not in alternatives_read
            )
            if ctype == "text/plain" and (not texts or further):
                texts.append(part)
                if kind == "multipart/alternative":
                    alternatives_read.add(id(parent))
            elif ctype == "text/html" and kind == "multipart/mixed":
                # HTML of its own beside other parts, not an alternative of a text: a list's
                # footer after the mail, or the mail before a plain footer. A part of the text.
                texts.append(part)
                html_part = html_part or part
            elif ctype == "text/html" and html_part is None:
                html_part = part
            elif ctype == "text/calendar":  # an invitation's calendar part is what it proposes
                keep(part, ctype, "invite.ics")
            continue  # the alternatives of what was kept, bounces' copied headers
        keep(part, ctype, filename or f"attachment.{ctype.split('/')[-1][:10]}")
    # Gmail sends an invitation twice, inline and as invite.ics: one is enough.
    calendars = [a for a in attachments if a.filename.lower().endswith(".ics")]
    if len(calendars) > 1 and calendars[0].filename == "invite.ics":
        attachments = [a for a in attachments if a is not calendars[0]]
    return texts, html_part, attachments, skipped


def _pieces_text(parts) -> str:
    """The text of a mail written in several parts, in order; HTML ones read as text. A part
    that says again what is already there (a mailer that sends its text and HTML side by
    side rather than as alternatives) is left out."""
    if len(parts) == 1 and parts[0].get_content_type() != "text/html":
        return _decode(parts[0])  # as written, to the last line break
    pieces: list[str] = []
    before = ("", "")  # the last piece's type, and its words
    for part in parts:
        kind = part.get_content_type()
        piece = _decode(part)
        if kind == "text/html":
            piece = html_to_text(piece)
        piece = piece.strip("\n")
        words = _words_of(piece)
        if not words or (kind != before[0] and words == before[1]):
            continue  # nothing, or the text beside it again in the other format
        pieces.append(piece)
        before = (kind, words)
    return "\n\n".join(pieces)


def _words_of(text: str) -> str:
    """What a text says, for comparing a plain part with its HTML twin: without the link
    addresses html_to_text writes after a link's words."""
    return " ".join(re.sub(r" ?<[a-z][a-z0-9+.-]*:[^<>\s]*>", "", text).split()).casefold()


def _forwarded_text(content) -> str:
    """What a mail forwarded as an attachment says, headed by who wrote it, for a forward
    that says nothing of its own (its .eml is kept beside)."""
    if not isinstance(content, bytes):
        return ""
    inner = BytesParser(policy=policy.compat32).parsebytes(content)
    plain = next((p for p, _ in _leaves(inner) if p.get_content_type() == "text/plain"), None)
    html = next((p for p, _ in _leaves(inner) if p.get_content_type() == "text/html"), None)
    said = _decode(plain) if plain else html_to_text(_decode(html)) if html else ""
    if not said.strip():
        return ""
    name, address = _address(inner, "From")
    who = format_address(name, address) if address else ""
    heading = f"{FORWARDED_HEADING}\nFrom: {who}\nSubject: {_header(inner, 'Subject')}\n\n"
    return heading + said


def _forwarded_keep(part, filename: str, attachments: list, keep) -> None:
    """A mail forwarded as an attachment: kept whole as an .eml, named by its subject. Files
    in it too big for the parser were set aside (_spool_big_parts) and are kept beside it."""
    content = _inner_bytes(part)
    if not (content or b"").strip():  # an empty message/rfc822 part: nothing forwarded
        return
    inner = part.get_payload(0)
    if _encoded(part):  # what the parser read as a mail was its base64 or quoted-printable
        inner = BytesParser(policy=policy.compat32).parsebytes(content)
    subject = _readable(_header(inner, "Subject"))[:100]
    attachments.append(
        InboundAttachment(
            filename=filename or f"{subject or 'forwarded'}.eml",
            content_type=part.get_content_type(),
            content=content,
        )
    )
    for leaf in inner.walk():  # into mails forwarded within it too
        content = leaf.get_payload(decode=True) if not leaf.is_multipart() else None
        if content and content.startswith(SPOOL_MARKER.encode()):
            keep(leaf, leaf.get_content_type(), _filename(leaf) or "attachment")


def _unwrapped(winmail: InboundAttachment) -> list[InboundAttachment]:
    """The files an Outlook winmail.dat carries, in its place. Itself, as it came, when it
    cannot be read or carries no file (a rich-text body only, already in the text part); and
    beside its files when it also carries what is no file (a mail attached to the mail)."""
    content = winmail.content
    if isinstance(content, File):
        content.seek(0)
        content = content.read()
    try:
        carried = tnef_files(content)
    except Unreadable:
        return [winmail]
    files = [
        InboundAttachment(
            filename=_readable(file.filename) or "attachment",
            content_type=_content_type(file.content_type, file.filename),
            content=file.content,
        )
        for file in carried
        if file.content is not None
    ]
    if not files or len(files) < len(carried):
        files.append(winmail)
    return files


UU_BEGIN = re.compile(r"begin [0-7]{3,4} (\S.{0,254})")


def _uuencoded_files(text: str) -> tuple[str, list[InboundAttachment]]:
    """Files uuencoded into the text itself ("begin 644 report.csv" ... "end"), as older
    mailers, fax and scanner gateways still send them: taken out of the text as attachments.
    Line by line, so that a thousand "begin" lines with no "end" cost one pass. A block that
    does not decode stays text."""
    kept, files, lines = [], [], text.split("\n")
    ends = [n for n, line in enumerate(lines) if line.rstrip("\r ") == "end"]
    at = 0
    while at < len(lines):
        begin = UU_BEGIN.fullmatch(lines[at].rstrip("\r"))
        following = bisect.bisect_right(ends, at) if begin else len(ends)
        end = ends[following] if following < len(ends) else None
        if end is None:
            kept.append(lines[at])
            at += 1
            continue
        try:
            content = b"".join(
                binascii.a2b_uu(line.rstrip("\r")) for line in lines[at + 1 : end] if line.strip()
            )
        except (binascii.Error, ValueError):
            kept.append(lines[at])
            at += 1
            continue
        name = _readable(begin.group(1)) or "attachment"
        files.append(InboundAttachment(name, _content_type("", name), content))
        at = end + 1
    return ("\n".join(kept).strip("\n") if files else text), files


def _content_type(given: str, filename: str) -> str:
    """A type as a MIME header would give it, else the one the file's name says."""
    given = given.strip().lower()
    if re.fullmatch(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*", given):
        return given
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _filename(part) -> str:
    try:
        name = part.get_filename() or ""
        if "\ufffd" in name:  # raw 8-bit bytes, which compat32 gave up on: read as headers are
            header = Message()
            for key in ("Content-Disposition", "Content-Type"):
                header[key] = next(iter(_header_values(part, key)), "")
            name = header.get_filename() or name
        if "=?" in name:  # RFC 2047 words, as many mailers still write file names
            name = str(policy.default.header_factory("X-Filename", name))
    except Exception:  # noqa: BLE001
        name = ""
    return _readable(name)


def _readable(filename: str) -> str:
    """A file name as the sender gave it, readable and never a path."""
    return re.sub(r"[\x00-\x1f/\\]", "_", filename).strip()[:255]


def _decode(part) -> str:
    """Body text, as written: format=flowed paragraphs joined again (see _unflow)."""
    text = _decode_charset(part)
    if (
        part.get_content_type() == "text/plain"
        and str(part.get_param("format")).lower() == "flowed"
    ):
        return _unflow(text, delsp=str(part.get_param("delsp") or "").lower() == "yes")
    return text


def _unflow(text: str, *, delsp: bool) -> str:
    """RFC 3676: a line ending in a space goes on in the next one at the same quote depth
    (Apple Mail and Thunderbird wrap paragraphs so); a space after the quote marks is
    stuffing. Without this every wrapped line shows as a hard break."""
    out, flowing = [], None  # flowing: (depth, text) of a paragraph not yet ended

    def line_of(depth: int, body: str) -> str:
        return "> " * depth + body if depth else body

    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        body = line[depth:].removeprefix(" ")
        if body == "-- ":  # the signature separator: never flowed, nor flowed into
            if flowing:
                out.append(line_of(*flowing))
            out.append(line_of(depth, body))
            flowing = None
            continue
        if flowing and flowing[0] == depth:
            body = flowing[1] + body
        elif flowing:
            out.append(line_of(*flowing))
        flowing = None
        if body.endswith(" "):
            flowing = (depth, body[:-1] if delsp else body)
        else:
            out.append(line_of(depth, body))
    if flowing:
        out.append(line_of(*flowing))
    return "\n".join(out)


def _decode_charset(part) -> str:
    """Body text whatever its declared charset: trust the label when it decodes cleanly, else
    let charset-normalizer find the real one, else windows-1252, which never fails."""
    raw = part.get_payload(decode=True) or b""
    declared = codec_for(part.get_content_charset() or "us-ascii")
    if declared in ("us-ascii", "ascii") and ISO_2022_JP.search(raw):
        # Older Japanese mailers send ISO-2022-JP unlabelled: it is 7-bit, so it reads as
        # ASCII, with escape codes all through the text.
        declared = "iso-2022-jp"
    for charset in (declared, "utf-8"):
        try:
            return raw.decode(charset).replace("\r\n", "\n")
        except (LookupError, UnicodeDecodeError):
            continue
    best = charset_normalizer.from_bytes(raw).best()
    # A handful of 8-bit letters ("Sébastien ici") read as well in Urdu or Chinese code
    # pages as in Latin ones, and the guess is a coin toss: it needs more to go on.
    enough = _eight_bit(raw) >= 8
    if best is not None and not best.encoding.startswith(SINGLE_BYTE_LATIN) and enough:
        return str(best).replace("\r\n", "\n")
    # Short western text cannot tell one Latin code page from another; the mislabelled mail
    # seen in practice is almost always windows-1252 (Outlook, older webmail).
    return raw.decode("cp1252", "replace").replace("\r\n", "\n")


ISO_2022_JP = re.compile(rb"\x1b\$[@B]")
SINGLE_BYTE_LATIN = ("cp125", "latin", "iso8859", "mac_", "cp850", "cp437")


def _eight_bit(raw: bytes) -> int:
    return len(raw) - len(raw.translate(None, bytes(range(0x80, 0x100))))


def sanitize_email_html(html: str) -> str:
    """Sanitised email HTML. Remote images are not loaded: their URL moves to data-src, so the
    sender cannot track when an agent opens the mail; inline (cid:) images are kept."""
    if not html:
        return ""
    clean = sanitize_html(
        html,
        attributes={
            "img": {"src", "alt", "width", "height"},
            "a": {"href", "title"},
            "td": {"colspan", "rowspan"},
            "th": {"colspan", "rowspan"},
        },
    )
    return re.sub(r'<img([^>]*?) src="(https?:[^"]*)"', r'<img\1 data-src="\2"', clean)


class _TextOfHtml(HTMLParser):
    """What an HTML-only mail says, as text: quoted blocks keep their `>` (so split_reply finds
    the history), links keep their address, and what the sender hid (a preheader, a tracking
    block) stays hidden. Linear in the input, whatever its nesting."""

    SKIP = frozenset({"script", "style", "head", "title", "template"})
    VOID = frozenset({"br", "img", "hr", "meta", "link", "input", "wbr", "col", "area", "source"})
    BLOCKS = frozenset(
        {"p", "div", "li", "tr", "table", "ul", "ol", "blockquote", "pre", "hr", "section"}
        | {"article", "header", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "dd", "dt"}
    )
    # Elements a browser closes by itself when these open (<p>hidden<div>shown, <li>, <body>).
    CLOSED_BY = {"p": BLOCKS, "li": {"li"}, "td": {"td", "th", "tr"}, "head": {"body"}}
    MAX_QUOTE_DEPTH = 5  # deeper quotes are still quotes; each level would copy every line

    def __init__(self, *, hide: bool = True):
        super().__init__(convert_charrefs=True)
        self.hide = hide
        self.lines: list[list] = [[0, ""]]  # [quote depth, text] per line
        self.depth = self.pre = 0
        self.hidden: tuple[str, int] | None = None  # (the hiding element, its nesting level)
        self.open: dict[str, int] = {}  # elements open around the text, by name
        self.link: list[str] | None = None  # [address, its text so far]

    def _break(self):
        if self.lines[-1][1].strip():
            self.lines.append([self.depth, ""])
        else:
            self.lines[-1][0] = self.depth

    def _hiding(self, tag: str, opening: bool) -> bool:
        """Whether `tag` falls inside a hidden element, keeping count of that element's own
        nesting: only its tag is counted, so nothing is searched."""
        root, level = self.hidden
        ends = opening and level == 1 and tag in self.CLOSED_BY.get(root, ())
        if ends or (not opening and tag != root and self.open.get(tag)):
            # The browser ends it here (<p> before a block), or an element around it closes
            # with it still open: what follows shows.
            self.hidden = None
            return False
        if tag == root:
            level += 1 if opening else -1
            self.hidden = (root, level) if level else None
        return True

    def handle_starttag(self, tag, attrs):
        if self.hidden and self._hiding(tag, True):
            return
        attrs = dict(attrs)
        hidden = "hidden" in attrs or HIDDEN_STYLE.search(attrs.get("style") or "")
        if tag in self.SKIP or (self.hide and hidden):
            if tag not in self.VOID:
                self.hidden = (tag, 1)
            return
        if tag not in self.VOID:
            self.open[tag] = self.open.get(tag, 0) + 1
        if tag == "br":
            self.lines.append([self.depth, ""])
        elif tag in self.BLOCKS:
            self._break()
            if tag == "blockquote":
                self.depth += 1
                self.lines[-1][0] = self.depth
            elif tag == "li":
                self.lines[-1][1] = "- "
            elif tag == "pre":
                self.pre += 1
        elif tag in ("td", "th") and self.lines[-1][1].strip():
            self.lines[-1][1] += "  "
        elif tag == "a":
            self._link_end()  # an <a> inside another ends it, as in a browser
            href = (attrs.get("href") or "").strip()
            if href.lower().startswith(("http://", "https://")):
                self.link = [href, ""]

    def handle_endtag(self, tag):
        if self.hidden and self._hiding(tag, False):
            return
        if self.open.get(tag):
            self.open[tag] -= 1
        if tag == "blockquote":
            self.depth = max(self.depth - 1, 0)
        elif tag == "pre":
            self.pre = max(self.pre - 1, 0)
        if tag in self.BLOCKS:
            self._break()
        elif tag == "a":
            self._link_end()

    def _link_end(self):
        if self.link:
            address, text = self.link
            if address not in text:  # "click here" says nothing of where it goes
                self.lines[-1][1] += f" <{address}>"
        self.link = None

    def handle_data(self, data):
        if self.hidden:
            return
        pieces = data.split("\n") if self.pre else [re.sub(r"\s+", " ", data)]
        for n, piece in enumerate(pieces):
            if n:  # a line break inside <pre>, whose lines keep their indentation
                self.lines.append([self.depth, "", True])
            self.lines[-1][1] += piece
        if self.link:
            self.link[1] += data

    def text(self) -> str:
        self._link_end()  # an <a> left open
        out = []
        for depth, line, *pre in self.lines:
            line = "> " * min(depth, self.MAX_QUOTE_DEPTH) + (line if pre else line.strip())
            out.append(line.rstrip())
        return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


HTML_TO_TEXT_LIMIT = 2 * 1024 * 1024  # characters of HTML read for the text: ~1,000 pages


def html_to_text(html: str) -> str:
    html = html[:HTML_TO_TEXT_LIMIT]
    for hide in (True, False):
        # What a sender hid stays hidden, unless that is everything: a hidden element that
        # never closes would hide the message itself, and "(no text)" helps nobody.
        parser = _TextOfHtml(hide=hide)
        parser.feed(html)
        parser.close()
        if text := parser.text():
            return text[:HTML_TO_TEXT_LIMIT]
    return ""


# --- Quotes and signatures --------------------------------------------------------------------

# Outlook's header block above the quoted mail, in the languages customers write in: English,
# Portuguese, Spanish, French, German, Italian, Dutch, Swedish, Danish and Norwegian, Polish
# and Czech, Finnish, Turkish, Russian, Japanese, Chinese, Korean (a full-width colon too).
HEADER_START = re.compile(
    r"^\s*\**(from|de|von|da|van|från|fra|od|lähettäjä|kimden|от|差出人|发件人|보낸 사람)"
    r"\s*[:：]\**\s*\S",
    re.I,
)
HEADER_NEXT = re.compile(
    r"^\s*\**(sent|date|to|subject|enviado|envoy[ée]|data|fecha|para|objet|assunto|asunto|"
    r"gesendet|an|betreff|à|cc|verzonden|aan|onderwerp|inviato|a|oggetto|skickat|till|ämne|"
    r"kopia|sendt|til|emne|kopi|wysłano|do|temat|dw|odesláno|komu|předmět|lähetetty|"
    r"vastaanottaja|aihe|kopio|gönderildi|kime|konu|отправлено|кому|тема|копия|送信日時|宛先|"
    r"件名|发送时间|收件人|主题|抄送|보낸 날짜|받는 사람|제목)\s*[:：]",
    re.I,
)
# A quoted mail's header block always names its subject: "From: Lisbon / To: Berlin / Date:"
# in a booking change, or a pasted bank receipt, does not.
HEADER_SUBJECT = re.compile(
    r"^\s*\**(subject|objet|assunto|asunto|betreff|onderwerp|oggetto|ämne|emne|temat|"
    r"předmět|aihe|konu|тема|件名|主题|제목)\s*[:：]",
    re.I,
)
HEADER_LINES = 10  # how far below "From:" its Subject may be (a To: list wraps over lines)
# A forward's marker: what follows is the message forwarded, not history. Gmail's, then Apple
# Mail's ("Begin forwarded message:", "Anfang der weitergeleiteten Nachricht:"...).
FORWARDED_HEADING = "---------- Forwarded message ---------"  # Gmail's: FORWARDED knows it
FORWARDED = re.compile(
    r"^\s*-*\s*(forwarded message|begin forwarded message|mensagem encaminhada|"
    r"message transf[ée]r[ée]|mensaje reenviado|weitergeleitete nachricht|"
    r"anfang der weitergeleiteten nachricht|in[íi]cio da mensagem (re)?encaminhada|"
    r"d[ée]but du message r[ée]exp[ée]di[ée]|inicio del mensaje reenviado|"
    r"inizio messaggio inoltrato|begin doorgestuurd bericht)\s*:?\s*-*\s*$",
    re.I,
)
# A subject that says the mail is a forward (Outlook's FW:, WG:, TR:, RV:, Enc:...): Outlook
# marks the forwarded mail with the same header block as a reply's history. (Not "VS:", a
# reply in Finnish.) Mail programs may name the forwarded mail in In-Reply-To: not a sign.
FORWARD_SUBJECT = re.compile(r"^\s*(fwd?|wg|tr|rv|enc|doorst|vl)\s*:", re.I)
ORIGINAL_MESSAGE = re.compile(
    r"^\s*-{2,}\s*(original message|mensagem original|"
    r"message d'origine|mensaje original|urspr[üu]ngliche nachricht)"
    r"\s*-{2,}\s*$",
    re.I,
)
# A phone's signature: a short line of its own ("Von meinem iPhone gesendet"), never a
# sentence that begins the same way ("Von meinem Konto wurden ... abgebucht.").
MOBILE_SIGNATURE = re.compile(
    r"(sent from my|enviado do meu|enviado desde mi|envoy[ée] de mon|von meinem|"
    r"get outlook for)\b[^.!?:<]{0,40}(<https?://[^>\s]*>)?",
    re.I,
)
SIGNATURE_MAX_LINES = 10  # what may follow a bare "--" for it to be a signature's
FORWARDER_SIGNATURE_LINES = 60  # how far above a forwarded message its forwarder's may start


RULE = re.compile(r"[_=-]{8,}")


def _filled_above(lines: list[str], i: int) -> int:
    """The index of the nearest line above line `i` that is not blank, or -1."""
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    return j


def split_reply(text: str, *, forward: bool = False) -> tuple[str, str]:
    """(new text, quoted history + signature). Language-neutral where it can be: a tail of
    `>` lines (a signature or a footer may follow) and the attribution line ending in ':' just
    above it, in any language; the signature delimiter; Outlook's header block in the languages
    our customers write; a phone's signature ending the new text. Nothing after a forward's
    marker is history: it is the message forwarded; nor, in a `forward` (its subject says
    so), is Outlook's header block or "Original Message" rule, which mark the mail forwarded."""
    lines = text.replace("\r\n", "\n").split("\n")
    # The forwarded message's first line: what follows it is no history, and a signature
    # just above it is the forwarder's, so nothing is cut there.
    first_forwarded = _first_forwarded(lines, forward)
    # Whether each line begins a tail of quoted lines (blank ones allowed) that runs to the
    # end or to a "--" (a footer under the quote): one pass from the end, not one per line.
    quoted_tail = [True] * (len(lines) + 1)
    for i in range(len(lines) - 1, -1, -1):
        stripped = lines[i].strip()
        quoted_tail[i] = stripped == "--" or (
            (not stripped or stripped.startswith(">")) and quoted_tail[i + 1]
        )
    dashes = sum(1 for line in lines if line.rstrip() == "--")
    cut = len(lines)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if i == first_forwarded:
            break
        signature = _signature_starts(lines, i, dashes) and not _signs_forward(
            lines, i, first_forwarded
        )
        if ORIGINAL_MESSAGE.match(stripped) or signature:
            cut = i
            break
        if _header_block(lines, i):
            cut = i
            # Outlook rules the header block off with a line of underscores: it goes too.
            j = _filled_above(lines, i)
            if j >= 0 and RULE.fullmatch(lines[j].strip()):
                cut = j
            break
        if stripped.startswith(">") and quoted_tail[i]:
            cut = i
            # The attribution ("On ... wrote:", "Em ... escreveu:", "Le ... a écrit :") is the
            # paragraph just above the quote, ending with a colon; it may wrap over lines.
            j = _filled_above(lines, i)
            if j >= 0 and lines[j].rstrip().endswith(":"):
                k = j
                while k - 1 >= 0 and lines[k - 1].strip() and j - k < 2:
                    k -= 1
                cut = k
            break
    last = _filled_above(lines, cut)
    if last >= 0 and MOBILE_SIGNATURE.fullmatch(lines[last].strip()):
        cut = last
    new = "\n".join(lines[:cut]).strip()
    quoted = "\n".join(lines[cut:]).strip()
    if not new:  # everything looked quoted: show it all rather than nothing
        return text.strip(), ""
    return new, quoted


def _first_forwarded(lines: list[str], forward: bool) -> int:
    """The line that begins a forwarded message (its marker; in a `forward`, also Outlook's
    header block or "Original Message" rule), or len(lines)."""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if FORWARDED.match(stripped) or (
            forward and (ORIGINAL_MESSAGE.match(stripped) or _header_block(lines, i))
        ):
            return i
    return len(lines)


def forwarded_sender(text: str, *, forward: bool = False) -> tuple[str, str] | None:
    """(name, address) of whom a forwarded message is from, as the forward's header block
    names them ("From: Ana Silva <ana@example.com>", Outlook's "[mailto:...]"), or None."""
    lines = text.replace("\r\n", "\n").split("\n")
    first = _first_forwarded(lines, forward)
    for line in lines[first : first + HEADER_LINES + 1]:
        if HEADER_START.match(line):
            # Not parseaddr: these lines are written for people ("Brown, Peter <...>",
            # "<mailto:...>"), not to the RFC.
            value = line.split(":", 1)[1].replace("*", "").replace("mailto:", "")
            value = re.sub(r"\[([^\]\s]+@[^\]\s]+)\]", r"<\1>", value).strip()
            if "<" in value:
                name, _, address = value.rpartition("<")
                address = address.partition(">")[0]
            else:
                name, address = "", value.rpartition(" ")[2]
            try:
                validate_email(address)
            except ValidationError:
                return None
            return name.strip().strip('"').strip(), address.lower()
    return None


def _signs_forward(lines: list[str], i: int, forwarded: int) -> bool:
    """The signature at line `i` closes the forwarder's note: the forwarded message follows
    within what a signature takes (a legal notice can be long), with no history in between:
    no quoted line, no quoted mail's header block."""
    return (
        i < forwarded < len(lines)
        and forwarded <= i + FORWARDER_SIGNATURE_LINES
        and not any(
            lines[j].lstrip().startswith(">") or _header_block(lines, j)
            for j in range(i, forwarded)
        )
    )


def _header_block(lines: list[str], i: int) -> bool:
    """Line `i` starts a quoted mail's header block (From:, then Sent: or To:, and Subject:)."""
    block = lines[i + 1 : i + 1 + HEADER_LINES]
    return bool(
        HEADER_START.match(lines[i])
        and any(HEADER_NEXT.match(n) for n in block[:3])
        and any(HEADER_SUBJECT.match(n) for n in block)
    )


def _signature_starts(lines: list[str], i: int, dashes: int) -> bool:
    """Line `i` is the signature delimiter: "-- " (RFC 3676), or a bare "--" (mail programs
    that trim spaces) with no more than a signature's few lines after it, and the only one
    of the `dashes` bare ones (two make a frame around something pasted)."""
    if lines[i] == "-- ":
        return True
    return (
        dashes == 1
        and lines[i].rstrip() == "--"
        and sum(1 for n in lines[i + 1 :] if n.strip()) <= SIGNATURE_MAX_LINES
    )


def format_address(name: str, address: str) -> str:
    """A From/To value built by the email library, so no CR/LF from input reaches a header."""
    local, _, domain = address.partition("@")
    return str(Address(display_name=re.sub(r"[\r\n]+", " ", name), username=local, domain=domain))


def bare_address(value: str) -> str:
    return parseaddr(value)[1].lower()
