"""The files inside a winmail.dat: Outlook, sending "rich text" to the outside, wraps a mail's
attachments in one TNEF part (application/ms-tnef, [MS-OXTNEF]) that other mail programs show
as an opaque winmail.dat. Only the attachments are read, each with its long file name and
MIME type where Outlook gave them; the message's own body is already in the mail's text part.

Written here rather than taken from a library: the one on PyPI (tnefparse) trusts the counts
inside the file, so a crafted winmail.dat can keep a worker busy for hours. Every count and
length here is checked against the bytes that are left, and the walk has a fixed budget."""

import struct
from dataclasses import dataclass

SIGNATURE = 0x223E9F78
ATTACHMENT_LEVEL = 0x02
# Attribute ids, as [MS-OXTNEF] 2.1.3.2 numbers them (their low 16 bits).
OEM_CODEPAGE, ATTACH_RENDDATA, ATTACH_TITLE, ATTACH_DATA, ATTACH_PROPS = (
    0x9007,
    0x9002,
    0x8010,
    0x800F,
    0x9005,
)
# MAPI properties of an attachment read here: its long file name, short file name, MIME type.
LONG_FILENAME, FILENAME, MIME_TAG = 0x3707, 0x3704, 0x370E
# Sizes of fixed-size MAPI property types, padded to four bytes as TNEF writes them.
FIXED_SIZES = {0x0002: 4, 0x000B: 4, 0x0003: 4, 0x0004: 4, 0x000A: 4, 0x0005: 8, 0x0006: 8}
FIXED_SIZES |= {0x0007: 8, 0x0014: 8, 0x0040: 8, 0x0048: 16, 0x0001: 0}
VARIABLE = {0x001E, 0x001F, 0x0102, 0x000D}  # string8, unicode string, binary, object
MULTIPLE = 0x1000
MAX_ATTRIBUTES = 2000  # a real winmail.dat has a few dozen
MAX_PROPERTIES = 500  # per attachment
MAX_FILES = 100


@dataclass
class TnefFile:
    filename: str = ""
    content_type: str = ""
    content: bytes | None = None  # None: no file data (an attached mail, an OLE object)


class Unreadable(ValueError):
    """Not TNEF, or not as [MS-OXTNEF] writes it: the caller keeps winmail.dat as it came."""


def tnef_files(data: bytes) -> list[TnefFile]:
    """The attachments in a TNEF stream, in order, with their data where they are files;
    raises Unreadable."""
    view = memoryview(data)
    if len(view) < 6 or _uint32(view, 0) != SIGNATURE:
        raise Unreadable("no TNEF signature")
    codepage, files, offset = "cp1252", [], 6
    for _ in range(MAX_ATTRIBUTES):
        if offset == len(view):
            return files
        level, attribute = view[offset], _uint16(view, offset + 1)
        length = _uint32(view, offset + 5)
        body = _slice(view, offset + 9, length)
        offset += 9 + length + 2  # and the checksum
        if offset > len(view):
            raise Unreadable("an attribute runs past the end")
        if attribute == OEM_CODEPAGE and length >= 4:
            codepage = f"cp{_uint32(body, 0)}"
        elif attribute == ATTACH_RENDDATA:  # each attachment's attributes start with this one
            if len(files) == MAX_FILES:
                raise Unreadable("too many attachments")
            files.append(TnefFile())
        elif level == ATTACHMENT_LEVEL and files:
            file = files[-1]
            if attribute == ATTACH_DATA:
                file.content = bytes(body)
            elif attribute == ATTACH_TITLE and not file.filename:
                file.filename = _text(bytes(body), codepage)
            elif attribute == ATTACH_PROPS:
                props = _properties(body, codepage)
                file.filename = props.get(LONG_FILENAME) or props.get(FILENAME) or file.filename
                file.content_type = props.get(MIME_TAG, "")
    raise Unreadable("too many attributes")


def _properties(view: memoryview, codepage: str) -> dict[int, str]:
    """The text properties of one MAPI property list ([MS-OXTNEF] 2.1.3.4), as far as they
    can be read: a property of a type this does not know ends the walk, not the file."""
    found: dict[int, str] = {}
    try:
        count, offset = _uint32(view, 0), 4
        for _ in range(min(count, MAX_PROPERTIES)):
            kind, prop = _uint16(view, offset), _uint16(view, offset + 2)
            offset += 4
            if prop >= 0x8000:  # a named property: its GUID, then a number or a name
                named_by = _uint32(view, offset + 16)
                offset += 20
                offset += 4 if named_by == 0 else 4 + _padded(_uint32(view, offset))
            values = 1
            if kind & MULTIPLE or kind in VARIABLE:
                values, offset = _uint32(view, offset), offset + 4
            kind &= ~MULTIPLE
            if kind in FIXED_SIZES:
                offset += FIXED_SIZES[kind] * values
                continue
            if kind not in VARIABLE:
                break
            for _ in range(min(values, MAX_PROPERTIES)):
                size = _uint32(view, offset)
                value = bytes(_slice(view, offset + 4, size))
                offset += 4 + _padded(size)
                if prop in (LONG_FILENAME, FILENAME, MIME_TAG) and kind in (0x001E, 0x001F):
                    found[prop] = _text(value, "utf-16-le" if kind == 0x001F else codepage)
    except Unreadable:
        pass
    return found


def _text(raw: bytes, codepage: str) -> str:
    if codepage == "utf-16-le":
        raw = raw[: len(raw) - len(raw) % 2]  # a terminator written as one byte
    try:
        text = raw.decode(codepage)
    except (LookupError, UnicodeDecodeError):
        text = raw.decode("cp1252", "replace")
    return text.split("\x00", 1)[0].strip()


def _padded(size: int) -> int:
    return size + -size % 4


def _slice(view: memoryview, start: int, length: int) -> memoryview:
    if start + length > len(view):
        raise Unreadable("a length runs past the end")
    return view[start : start + length]


def _uint16(view: memoryview, at: int) -> int:
    return struct.unpack_from("<H", _slice(view, at, 2))[0]


def _uint32(view: memoryview, at: int) -> int:
    return struct.unpack_from("<I", _slice(view, at, 4))[0]
