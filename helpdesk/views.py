"""Health, the landing page, and the page a satisfaction survey links to."""

import asyncio
import hashlib
import uuid
from collections import Counter
from datetime import timedelta
from urllib.parse import urlsplit

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import Resolver404, resolve, reverse, reverse_lazy
from django.utils import translation
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from helpdesk.celery import app as celery_app
from helpdesk.celery import embedded
from helpdesk.forms import PasswordResetForm, ProfileForm
from helpdesk.models import ApiToken
from helpdesk.ratelimit import hit, hits


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _check_channel_layer() -> str:
    """A message sent to a fresh channel must come back: proves the layer carries messages."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")

    async def roundtrip():
        channel = await layer.new_channel("healthz.")
        token = uuid.uuid4().hex
        await layer.send(channel, {"type": "healthz", "token": token})
        # Pub/sub delivers at most once: a lost message must fail the check, not hang it.
        reply = await asyncio.wait_for(layer.receive(channel), 5)
        if reply.get("token") != token:
            raise RuntimeError("channel layer returned a different message")

    async_to_sync(roundtrip)()
    return "ok"


def _check_broker() -> str:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    if settings.EMBEDDED_WORKER and not embedded.alive:
        raise RuntimeError("embedded worker is not running")
    return "ok"


CHECKS = {
    "database": _check_database,
    "channel_layer": _check_channel_layer,
    "broker": _check_broker,
}


@never_cache
@require_GET
def healthz(request):
    """200 with each part's state when all is well, 503 naming the parts that are down. Why
    a part is down (hosts, user names, a server's words) only to a signed-in admin: for
    anyone else, the state alone."""
    detailed = request.user.is_authenticated and request.user.is_staff
    report = {}
    for name, check in CHECKS.items():
        try:
            report[name] = check()
        except Exception as exc:  # noqa: BLE001 - any failure means "down", with its reason
            report[name] = f"down: {type(exc).__name__}: {exc}"[:300] if detailed else "down"
    healthy = all(state == "ok" for state in report.values())
    # Mailboxes are reported but do not fail the check: a customer's broken IMAP password
    # must not make the orchestrator restart a healthy web process.
    try:
        from channels_adapters.email.health import email_inboxes_with_health, health_of

        healths = {inbox.name: health_of(inbox) for inbox in email_inboxes_with_health()}
        # Anyone may see how many mailboxes are in which state; their names only an admin.
        report["mailboxes"] = (
            healths if detailed else Counter(h.partition(":")[0] for h in healths.values())
        )
    except Exception as exc:  # noqa: BLE001 - the database check above already says why
        report["mailboxes"] = f"unknown: {type(exc).__name__}" if detailed else "unknown"
    return JsonResponse(
        {"status": "ok" if healthy else "down", **report}, status=200 if healthy else 503
    )


def home(request):
    return redirect("inbox:list")


@never_cache
def rate(request, token: str):
    """A satisfaction survey's page (routing.replies): the customer rates the conversation from
    1 to 5, in their language. Opening it changes nothing (mail scanners open links); only
    the form does, and a second rating replaces the first."""
    from channels_adapters.webchat.chat import conversation_rate
    from conversations.models import Conversation
    from routing.replies import RATING_LINK_DAYS, RATING_SALT

    try:  # whose it is first (said in their language), then whether it still works
        pk = signing.loads(token, salt=RATING_SALT)
    except signing.BadSignature:
        raise Http404 from None
    conversations = Conversation.objects.select_related("inbox", "customer")
    conversation = get_object_or_404(conversations, pk=pk)
    while conversation.merged_into_id:  # its messages, and its rating, live there now
        conversation = conversations.get(pk=conversation.merged_into_id)
    context = {"conversation": conversation, "chosen": request.GET.get("score", "")}
    status = 200
    with translation.override(conversation.customer.language or settings.LANGUAGE_CODE):
        context["LANGUAGE_CODE"] = translation.get_language()  # the page's lang
        try:
            signing.loads(token, salt=RATING_SALT, max_age=timedelta(days=RATING_LINK_DAYS))
        except signing.SignatureExpired:
            return render(request, "rate.html", {**context, "expired": True}, status=410)
        if request.method == "POST":
            context["chosen"] = request.POST.get("rating", "")
            context["comment"] = request.POST.get("comment", "")
            try:
                rating = int(context["chosen"])
            except ValueError:
                rating = None
            try:
                conversation_rate(conversation, rating=rating, comment=context["comment"])
            except ValidationError as exc:
                context["error"], status = exc.messages[0], 400
            else:
                context["rated"] = True
        return render(request, "rate.html", context, status=status)


# Failed sign-ins allowed in a window before we answer 429. From a browser the account signed
# in on before (a signed cookie says so): that browser's own failures, nobody else's, so no one
# can lock the owner out by failing on purpose, from however many addresses or from the
# owner's own (an office's, or everyone's behind a proxy). From any other browser: at one
# account from one address (guessing), from one address at any accounts (one password tried
# on many), and at one account from anywhere (guessing spread over addresses).
LOGIN_FAILURES_ALLOWED = {"device": 10, "account-address": 10, "address": 30, "account": 20}
LOGIN_WINDOW_SECONDS = 15 * 60
DEVICE_COOKIE, DEVICE_SALT = "threadline_device", "threadline.login.device"
DEVICE_SECONDS = 365 * 24 * 3600


class LoginView(auth_views.LoginView):
    """Email and password, with failures counted per account and client address (see
    LOGIN_FAILURES_ALLOWED): guessing is slowed to ten tries per quarter of an hour."""

    template_name = "login.html"
    redirect_authenticated_user = True

    def _keys(self) -> dict[str, int]:
        """cache key -> failures allowed."""
        email = (self.request.POST.get("username") or "").strip().lower()
        address = self.request.META.get("REMOTE_ADDR", "")
        allowed = LOGIN_FAILURES_ALLOWED
        device = self.request.COOKIES.get(DEVICE_COOKIE, "")
        if email and self._known(email):
            key = f"login-fail:device:{hashlib.sha256(device.encode()).hexdigest()}"
            return {key: allowed["device"]}
        keys = {f"login-fail:ip:{address}": allowed["address"]}
        if email:
            keys[f"login-fail:user-ip:{email}:{address}"] = allowed["account-address"]
            keys[f"login-fail:user:{email}"] = allowed["account"]
        return keys

    def _known(self, email: str) -> bool:
        known = self.request.get_signed_cookie(
            DEVICE_COOKIE, default="", salt=DEVICE_SALT, max_age=DEVICE_SECONDS
        )
        return known == email

    def post(self, request, *args, **kwargs):
        if any(hits(key) >= allowed for key, allowed in self._keys().items()):
            response = self.render_to_response(
                {"form": self.get_form(), "throttled": True}, status=429
            )
            response["Retry-After"] = str(LOGIN_WINDOW_SECONDS)
            return response
        return super().post(request, *args, **kwargs)

    def get_redirect_url(self):
        """Where `next` leads; an action on a conversation (a reply sent as the session ended
        lands here with next=/inbox/59/reply) leads back to the conversation, which a GET can
        show, rather than to its POST-only address."""
        url = super().get_redirect_url()
        try:
            match = resolve(urlsplit(url).path) if url else None
        except Resolver404:
            return url
        if match and match.namespace == "inbox" and "number" in match.kwargs:
            return reverse("inbox:conversation", args=[match.kwargs["number"]])
        return url

    def form_valid(self, form):
        response = super().form_valid(form)
        response.set_signed_cookie(
            DEVICE_COOKIE,
            form.get_user().email,
            salt=DEVICE_SALT,
            max_age=DEVICE_SECONDS,
            httponly=True,
            samesite="Lax",
            secure=settings.SESSION_COOKIE_SECURE,
        )
        return response

    def form_invalid(self, form):
        for key in self._keys():
            hit(key, LOGIN_WINDOW_SECONDS)
        return super().form_invalid(form)


# Reset mails asked for in a window before we answer 429: from one address (someone mailing
# many agents, or one agent many times), and for one address typed in, known or not (so the
# answer says nothing of who has an account), which keeps anyone from flooding an agent's
# mailbox with resets.
RESET_REQUESTS_ALLOWED = {"address": 10, "account": 3}
RESET_WINDOW_SECONDS = 60 * 60


class PasswordResetView(auth_views.PasswordResetView):
    """ "Forgot your password?": a link by email to set a new one. The same answer whether
    or not the address has an account; inactive agents get no mail (Django's rule)."""

    template_name = "password_reset/form.html"
    form_class = PasswordResetForm
    subject_template_name = "email/password_reset_subject.txt"
    email_template_name = "email/password_reset.txt"
    html_email_template_name = "email/password_reset.html"
    success_url = reverse_lazy("password_reset_done")

    def post(self, request, *args, **kwargs):
        email = (request.POST.get("email") or "").strip().lower()
        allowed = RESET_REQUESTS_ALLOWED
        keys = {f"reset:ip:{request.META.get('REMOTE_ADDR', '')}": allowed["address"]}
        if email:
            keys[f"reset:user:{hashlib.sha256(email.encode()).hexdigest()}"] = allowed["account"]
        if any(hits(key) >= limit for key, limit in keys.items()):
            response = self.render_to_response(
                {"form": self.get_form(), "throttled": True}, status=429
            )
            response["Retry-After"] = str(RESET_WINDOW_SECONDS)
            return response
        for key in keys:
            hit(key, RESET_WINDOW_SECONDS)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        # Links lead to our public address where it is set, whatever Host the request named.
        base = settings.PUBLIC_URL or self.request.build_absolute_uri("/").rstrip("/")
        self.extra_email_context = {"base": base}
        return super().form_valid(form)


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "password_reset/sent.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "password_reset/confirm.html"
    success_url = reverse_lazy("password_reset_complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "password_reset/complete.html"


@never_cache
@login_required
def api_tokens(request):
    """An agent's own REST API tokens: make one (shown on this answer only: it is not kept),
    list them with when each was last used, revoke one."""
    from conversations.selectors import id_given
    from helpdesk.tokens import api_token_create, api_token_revoke

    made, error = "", ""
    if request.method == "POST":
        if (pk := id_given(request.POST.get("revoke"))) is not None:
            api_token = get_object_or_404(ApiToken, pk=pk, user=request.user)
            api_token_revoke(api_token=api_token)
            messages.success(request, f"“{api_token.name}” was revoked: it no longer works.")
            return redirect("api_tokens")
        try:
            _, made = api_token_create(user=request.user, name=request.POST.get("name", ""))
        except ValidationError as exc:
            error = "; ".join(exc.messages)
    context = {"tokens": request.user.api_tokens.all(), "made": made, "error": error}
    return render(request, "inbox/api_tokens.html", context, status=400 if error else 200)


@never_cache
@login_required
def profile(request):
    """The agent's own account: their name, what comes by email too, their password. Each part
    is its own form on the page; a password change keeps this session (others end)."""
    from django.contrib.auth import update_session_auth_hash
    from django.contrib.auth.forms import PasswordChangeForm

    action = request.POST.get("action") if request.method == "POST" else None
    profile_form = ProfileForm(
        request.POST if action == "profile" else None, instance=request.user, prefix="profile"
    )
    password_form = PasswordChangeForm(
        request.user, request.POST if action == "password" else None, prefix="password"
    )
    if action == "profile" and profile_form.is_valid():
        profile_form.save()
        messages.success(request, "Your profile was saved.")
        return redirect("profile")
    # Wrong current passwords are counted as failed sign-ins are: a session left open is not
    # a way to try passwords faster than the sign-in page allows.
    guesses = f"password-change-fail:{request.user.pk}"
    if action == "password" and hits(guesses) >= LOGIN_FAILURES_ALLOWED["device"]:
        # Unbound: checked and shown, its errors would still tell a right guess from a wrong one.
        password_form = PasswordChangeForm(request.user, prefix="password")
        context = {"profile_form": profile_form, "password_form": password_form, "throttled": True}
        response = render(request, "inbox/profile.html", context, status=429)
        response["Retry-After"] = str(LOGIN_WINDOW_SECONDS)
        return response
    if action == "password" and password_form.is_valid():
        password_form.save()
        update_session_auth_hash(request, password_form.user)
        messages.success(request, "Your password was changed; your other sessions were signed out.")
        return redirect("profile")
    failed = action in ("profile", "password")
    if action == "password" and "old_password" in password_form.errors:
        hit(guesses, LOGIN_WINDOW_SECONDS)
    if failed:
        request.user.refresh_from_db()  # the top bar shows the name as saved, not as typed
    context = {"profile_form": profile_form, "password_form": password_form}
    return render(request, "inbox/profile.html", context, status=400 if failed else 200)
