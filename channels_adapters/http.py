"""Calls to providers over HTTP: one pooled client with timeouts, answers sorted into "try
again later" and "give up", and guarded downloads of customer media."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from urllib.parse import unquote, urljoin, urlsplit

import httpcore
import httpx
from django.conf import settings

from channels_adapters.base import (
    AnswerLost,
    DeliveryError,
    FetchedMedia,
    PermanentError,
    TransientError,
)

MAX_REDIRECTS = 5
_client: httpx.Client | None = None
_public_client: httpx.Client | None = None


def client() -> httpx.Client:
    """The process's HTTP client: pooled connections, shared by threads."""
    global _client
    if _client is None:
        _client = httpx.Client(headers={"User-Agent": "Threadline"}, follow_redirects=False)
    return _client


class _PublicOnly(httpcore.SyncBackend):
    """Opens connections to public addresses only. The address checked is the address
    connected to: a name that answers a public address to a check and a private one to the
    connection (DNS rebinding) has no second answer to give."""

    def connect_tcp(self, host, port, *args, **kwargs):
        failed = None
        for address in _public_addresses(host, port):  # in order, as a plain connect would
            try:
                return super().connect_tcp(address, port, *args, **kwargs)
            except httpcore.ConnectError as exc:  # an IPv6 address from an IPv4-only host
                failed = exc
        raise failed


def public_client() -> httpx.Client:
    """The client for URLs that others chose (the media customers send, an integration's
    webhook): its own pool, on _PublicOnly."""
    global _public_client
    if _public_client is None:
        transport = httpx.HTTPTransport()
        # httpx has no public setting for the network backend; its pool takes one.
        transport._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=_PublicOnly()
        )
        _public_client = httpx.Client(
            headers={"User-Agent": "Threadline"},
            follow_redirects=False,
            transport=transport,
            trust_env=False,  # a proxy from the environment would connect past the check
        )
    return _public_client


def transient_or_permanent(response: httpx.Response, reason: str) -> DeliveryError:
    """Rate limits and server errors pass; anything else the provider refused will not."""
    if response.status_code == 429 or response.status_code >= 500:
        return TransientError(reason)
    return PermanentError(reason)


def provider_call(
    method: str,
    url: str,
    *,
    error: Callable[[httpx.Response], DeliveryError],
    via: httpx.Client | None = None,
    **kwargs,
) -> httpx.Response:
    """One request to a provider's API (through `via`, else the shared client). A successful
    answer is returned; a failed one raises what `error` makes of it; a timeout or a
    connection failure is transient."""
    # Host and port only: a webhook URL may carry a password (user:pass@), and the reasons
    # below reach agents and the delivery log.
    host = urlsplit(url).netloc.rpartition("@")[2]
    try:
        response = (via or client()).request(
            method, url, timeout=settings.PROVIDER_TIMEOUT_SECONDS, **kwargs
        )
    except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError) as exc:
        # The whole request was sent: the provider may have done what it asked.
        said = "did not answer in time" if isinstance(exc, httpx.ReadTimeout) else "hung up"
        raise AnswerLost(f"{host} {said} ({type(exc).__name__}).") from exc
    except httpx.TimeoutException as exc:
        raise TransientError(f"{host} did not answer in time ({type(exc).__name__}).") from exc
    except httpx.TransportError as exc:
        raise TransientError(f"Could not reach {host}: {exc}") from exc
    if response.is_success:
        return response
    raise error(response)


def _public_addresses(host: str, port: int) -> list[str]:
    """The addresses to connect to for `host`, refused unless every one of them is public."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise TransientError(f"Cannot resolve {host}: {exc}") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for text in addresses if not settings.MEDIA_FETCH_ALLOW_PRIVATE else ():
        address = ipaddress.ip_address(text)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise PermanentError(
                f"Refusing to connect to {host} ({address}): not a public address."
            )
    return addresses


def _filename(response: httpx.Response, url: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    match = re.search(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)", disposition, re.IGNORECASE)
    name = unquote(match.group(1)) if match else unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return name.strip()[:255]


def media_fetch(url: str, *, headers: dict | None = None, auth=None) -> FetchedMedia:
    """Download customer media, at most MEDIA_FETCH_MAX_BYTES, from public addresses only
    (each connection checks where it goes, redirects included). Credentials go only to the
    host they were given for."""
    limit = settings.MEDIA_FETCH_MAX_BYTES
    origin = urlsplit(url).netloc
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentError(f"Refusing to fetch {url[:200]!r}: not an http(s) URL.")
        same_origin = parts.netloc == origin
        try:
            with public_client().stream(
                "GET",
                url,
                headers=headers if same_origin else None,
                auth=auth if same_origin else None,
                timeout=settings.PROVIDER_TIMEOUT_SECONDS,
            ) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if not response.is_success:
                    raise transient_or_permanent(
                        response, f"Media download answered HTTP {response.status_code}."
                    )
                if int(response.headers.get("content-length") or 0) > limit:
                    raise PermanentError(f"Media larger than {limit // (1024 * 1024)} MB.")
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise PermanentError(f"Media larger than {limit // (1024 * 1024)} MB.")
                    chunks.append(chunk)
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                return FetchedMedia(b"".join(chunks), content_type, _filename(response, url))
        except httpx.TimeoutException as exc:
            raise TransientError("The media server did not answer in time.") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"Could not download media: {exc}") from exc
    raise PermanentError("Media download redirected too many times.")
