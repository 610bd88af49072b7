import zoneinfo
from functools import lru_cache

from django.http import QueryDict
from django.utils import timezone


@lru_cache(maxsize=1)
def zone_names() -> frozenset[str]:
    """The IANA zone names, read once (~5 ms): not "localtime", the server's own setting."""
    return frozenset(zoneinfo.available_timezones()) - {"localtime"}


def zone_named(name: str) -> zoneinfo.ZoneInfo | None:
    """The zone a cookie, a browser or a form names, if it is one: only names from the zone
    database are looked up (a folder's name, "America", would raise from ZoneInfo)."""
    return zoneinfo.ZoneInfo(name) if name in zone_names() else None


class AgentTimezoneMiddleware:
    """Times on the agents' pages in their own time zone, and times they type (snooze until)
    read in it: the browser names its zone in the `tz` cookie (static/inbox.js). Without
    one, or with a zone we do not know, TIME_ZONE."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        zone = zone_named(request.COOKIES.get("tz", ""))
        if zone:
            timezone.activate(zone)
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()


class NulCharacterMiddleware:
    """Query strings and forms of our pages lose their NUL characters (U+0000) before the
    view reads them: PostgreSQL cannot store one (a search or a saved field carrying one was
    a 500), and nobody can see one to take it out (a paste brings it). Views exempt from CSRF
    (webhooks, the widget, the API) read their own bodies and deal with NUL where they take
    input (conversations.services.without_nul, normalize_address)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        if getattr(view_func, "csrf_exempt", False):
            return None
        if _has_nul(request.GET):
            request.GET = _without_nul(request.GET)
        if request.method == "POST" and _has_nul(request.POST):
            request.POST = _without_nul(request.POST)
        return None


def _has_nul(query: QueryDict) -> bool:
    return any("\x00" in key + "".join(values) for key, values in query.lists())


def _without_nul(query: QueryDict) -> QueryDict:
    from conversations.services import without_nul  # which imports this module, through routing

    cleaned = QueryDict(mutable=True)
    for key, values in query.lists():
        cleaned.setlist(without_nul(key), without_nul(values))
    cleaned._mutable = False  # as Django's own are
    return cleaned


class ContentSecurityPolicyMiddleware:
    """A strict Content-Security-Policy on every response we serve: our own scripts, styles and
    images only, no inline script, no framing. Pages that need more say so explicitly."""

    POLICY = "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "object-src 'none'",
        ]
    )

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            policy = self.POLICY
            # Django admin ships inline scripts and styles; it is a staff-only page.
            if request.path.startswith("/admin/"):
                policy = policy.replace(
                    "script-src 'self'", "script-src 'self' 'unsafe-inline'"
                ).replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
            response["Content-Security-Policy"] = policy
        return response
