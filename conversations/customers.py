"""The customer page: one profile with every address and every conversation the agent may see,
on every channel; editing it, adding an address, merging two profiles into one.

Reads go through `selectors` and writes through `services`, as in `views`. A customer the agent
may not see is a 404. A profile merged into another redirects to it, but a form posted to it
changes nothing: the agent is sent to the surviving profile to try again there.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import tempfile
import zipfile

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Q, prefetch_related_objects
from django.http import FileResponse, HttpResponseBadRequest, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from channels_adapters.registry import adapter_for
from conversations import services
from conversations.models import OPAQUE_ADDRESSES, Channel, Identity, Message
from conversations.selectors import (
    conversation_get_for_agent,
    conversations_visible_to,
    customer_data,
    customer_get_for_agent,
    customers_visible_to,
    folded_contains,
    id_given,
)

log = logging.getLogger(__name__)

# The page shows this many conversations, newest first, and says when there are more.
HISTORY_LIMIT = 200
CANDIDATES_LIMIT = 20
ADDABLE_KINDS = (Channel.EMAIL, Channel.SMS, Channel.WHATSAPP)
BLANK_ATTRIBUTE_ROWS = 3
EXPORT_IN_MEMORY = 10 * 1024 * 1024  # an export archive past this size is built on disk


def _shown(value) -> str:
    """An attribute value as text: strings as they are, anything else (numbers, lists an
    integration stored) as JSON, so that it can be sent back unchanged."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _profile_form(customer) -> dict:
    return {
        "name": customer.name,
        "language": customer.language,
        "timezone": customer.timezone,
        "notes": customer.notes,
        "rows": [(key, _shown(value)) for key, value in customer.attributes.items()],
    }


# A customer nobody has named goes by one of these: a person can read them (not a visitor id).
READABLE_ADDRESSES = (Channel.EMAIL, Channel.SMS, Channel.WHATSAPP)


def customer_label(customer) -> str:
    """The name, else the oldest address a person can read, else the profile's number (two
    nameless chat visitors are told apart): the same as the list's rows."""
    readable = [i for i in customer.identities.all() if i.kind in READABLE_ADDRESSES]
    if customer.name or not readable:
        return customer.name or f"Customer {customer.pk}"
    return min(readable, key=lambda identity: identity.pk).address


def identities_to_write_to(customer, *, conversation=None, author=None) -> list[Identity]:
    """The customer's addresses an agent can write to: any channel with a sending adapter,
    each with what that channel takes in files and, read when the page shows it (`sending`),
    why free text would be refused now and the templates that may go instead, for a reply in
    `conversation` or a conversation `author` starts."""
    identities = []
    for identity in customer.identities.all():
        if adapter := adapter_for(identity.kind):
            identity.files_hint = adapter.attachments_hint()
            identity.sending = functools.cache(
                functools.partial(
                    _sending, adapter, identity, conversation=conversation, author=author
                )
            )
            identities.append(identity)
    return identities


def _sending(adapter, identity, **where) -> dict:
    """Whether free text may go to `identity` now, and what may go instead (a template). The
    inbox it would go from is looked up only where a messaging window makes it matter."""
    inbox = None
    if adapter.capabilities.window or adapter.capabilities.templates:
        try:
            inbox = services.inbox_for_message(identity, **where)
        except ValidationError as exc:  # no inbox of that channel left to send from
            return {"refusal": exc.messages[0], "templates": []}
    draft = Message(
        direction=Message.Direction.OUTBOUND, channel=identity.kind, inbox=inbox, identity=identity
    )
    templates = adapter.reply_templates(inbox) if inbox else []
    return {"refusal": adapter.send_refusal(draft), "templates": templates}


def customer_page(request, customer, *, status=200, **extra):
    prefetch_related_objects([customer], "identities")  # read three times below
    conversations = list(
        conversations_visible_to(request.user)
        .filter(customer=customer)
        .select_related("inbox", "assignee")
        .order_by("-last_activity_at", "-id")[: HISTORY_LIMIT + 1]
    )
    form = extra.pop("form", None) or _profile_form(customer)
    form["rows"] = [*form["rows"], *[("", "")] * BLANK_ATTRIBUTE_ROWS]
    context = {
        "customer": customer,
        "label": customer_label(customer),
        "identities": customer.identities.all(),
        "attributes": [(key, _shown(value)) for key, value in customer.attributes.items()],
        "conversations": conversations[:HISTORY_LIMIT],
        "more_conversations": len(conversations) > HISTORY_LIMIT,
        "kinds": [(kind, kind.label) for kind in ADDABLE_KINDS],
        "start_identities": identities_to_write_to(customer, author=request.user),
        "form": form,
        **extra,
    }
    return render(request, "inbox/customer.html", context, status=status)


def customer_moved(request, customer):
    """A form posted to a merged profile's old page: change nothing, go to its successor."""
    messages.error(
        request, "That customer was merged into this one; nothing was changed. Try again here."
    )
    return redirect("inbox:customer", customer_id=customer.pk)


@login_required
def customer_detail(request, customer_id: int):
    customer = customer_get_for_agent(user=request.user, customer_id=customer_id)
    if customer.pk != customer_id:
        return redirect("inbox:customer", customer_id=customer.pk)
    return customer_page(request, customer)


def _attributes_from_rows(rows, current: dict) -> tuple[dict, list[str]]:
    """Name/value rows to a dict, and what is wrong with them (every row's problem, not the
    first). A value that was shown as JSON and comes back unchanged keeps its type; whatever
    the agent typed is text. A row with neither name nor value is skipped."""
    attributes, errors = {}, []
    for key, value in rows:
        key = key.strip()
        if not key:
            if value.strip():
                errors.append(f"The attribute with the value {value!r} needs a name.")
            continue
        if key in attributes:
            errors.append(f"The attribute {key!r} appears twice.")
            continue
        unchanged = key in current and _shown(current[key]) == value
        attributes[key] = current[key] if unchanged else value
    return attributes, errors


@login_required
@require_POST
def customer_block(request, customer_id: int):
    """POST `blocked` 1 to block the sender (and close `conversation`, where the agent was),
    0 to take their messages again."""
    customer = customer_get_for_agent(user=request.user, customer_id=customer_id)
    if customer.pk != customer_id:
        return customer_moved(request, customer)
    if request.POST.get("blocked") not in ("0", "1"):
        return HttpResponseBadRequest("Say whether to block (1) or unblock (0).")
    number = id_given(request.POST.get("conversation"))
    conversation = (
        None
        if number is None
        else conversation_get_for_agent(user=request.user, conversation_id=number)
    )
    if conversation is not None and conversation.customer_id != customer.pk:
        return HttpResponseBadRequest("That conversation is not this customer's.")
    if request.POST["blocked"] == "0":
        services.customer_unblock(customer=customer, actor=request.user)
        messages.success(
            request,
            f"{customer_label(customer)} is no longer blocked: their messages come in again.",
        )
    else:
        services.customer_block(customer=customer, actor=request.user, conversation=conversation)
        messages.success(
            request,
            f"{customer_label(customer)} is blocked: what they send is kept aside, opens "
            "nothing and notifies nobody.",
        )
    if conversation is not None:  # back where the agent was
        return redirect("inbox:conversation", number=conversation.pk)
    return redirect("inbox:customer", customer_id=customer.pk)


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@login_required
def customer_export(request, customer_id: int):
    """Admins only: a ZIP of everything held about the customer (selectors.customer_data as
    customer.json, and their attachment files), for a request to see or take their data."""
    if not request.user.is_admin:
        return HttpResponseForbidden("Only an admin can export a customer's data.")
    customer = customer_get_for_agent(user=request.user, customer_id=customer_id)
    if customer.pk != customer_id:
        return redirect("inbox:customer_export", customer_id=customer.pk)
    data, files = customer_data(customer)
    data["exported_at"] = timezone.now().isoformat()
    archive = tempfile.SpooledTemporaryFile(max_size=EXPORT_IN_MEMORY)  # larger: on disk
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("customer.json", json.dumps(data, ensure_ascii=False, indent=2))
        for attachment, name in files:
            try:
                with attachment.file.open("rb") as source, bundle.open(name, "w") as target:
                    shutil.copyfileobj(source, target)
            except FileNotFoundError:  # said in the archive rather than failing the export
                bundle.writestr(f"{name}.missing.txt", "The stored file could not be found.")
    archive.seek(0)
    log.info("customer %s exported by user %s", customer.pk, request.user.pk)
    return FileResponse(archive, as_attachment=True, filename=f"customer-{customer.pk}.zip")


@login_required
@require_POST
def customer_erase(request, customer_id: int):
    """Admins only: POST `confirm` "erase" to delete the customer and their conversations
    (services.customer_erase), then go back to the inbox."""
    if not request.user.is_admin:
        return HttpResponseForbidden("Only an admin can erase a customer.")
    customer = customer_get_for_agent(user=request.user, customer_id=customer_id)
    if customer.pk != customer_id:
        return customer_moved(request, customer)
    if request.POST.get("confirm", "").strip().lower() != "erase":
        refusal = "Type “erase” to confirm: nothing was deleted."
        return customer_page(request, customer, status=400, erase_errors=[refusal])
    counts = services.customer_erase(customer=customer, actor=request.user)
    conversations, sent, files = (
        _counted(counts["conversations"], "conversation"),
        _counted(counts["messages"], "message"),
        _counted(counts["files"], "file"),
    )
    blanked = counts["blanked"]
    elsewhere = f"; {_counted(blanked, 'message')} in others’ conversations blanked" * bool(blanked)
    messages.success(
        request,
        f"Customer {customer_id} erased: {conversations}, {sent} and {files} deleted{elsewhere}.",
    )
    return redirect("inbox:list")


@login_required
@require_POST
def customer_edit(request, customer_id: int):
    customer = customer_get_for_agent(user=request.user, customer_id=customer_id)
    if customer.pk != customer_id:
        return customer_moved(request, customer)
    post = request.POST
    form = {
        "name": post.get("name", ""),
        "language": post.get("language", ""),
        "timezone": post.get("timezone", ""),
        "notes": post.get("notes", ""),
        "rows": list(zip(post.getlist("attr_key"), post.getlist("attr_value"), strict=False)),
    }
    data = {name: form[name] for name in ("name", "language", "timezone", "notes")}
    data["attributes"], errors = _attributes_from_rows(form["rows"], customer.attributes)
    try:
        if errors:  # said together with whatever else is wrong, so that one save fixes all
            try:
                services.customer_clean(data)
            except ValidationError as exc:
                errors += exc.messages
            raise ValidationError(errors)
        services.customer_update(customer=customer, data=data, actor=request.user)
    except ValidationError as exc:
        form["rows"] = [(key, value) for key, value in form["rows"] if key or value]
        return customer_page(request, customer, status=400, form=form, edit_errors=exc.messages)
    messages.success(request, "Customer saved.")
    return redirect("inbox:customer", customer_id=customer.pk)


@login_required
@require_POST
def customer_identity_add(request, customer_id: int):
    customer = customer_get_for_agent(user=request.user, customer_id=customer_id)
    if customer.pk != customer_id:
        return customer_moved(request, customer)
    kind, address = request.POST.get("kind", ""), request.POST.get("address", "")[:320]
    try:
        services.identity_add(customer=customer, kind=kind, address=address, actor=request.user)
    except services.AddressTaken as exc:
        # Offer the merge only with a profile this agent may see; never name one they can't.
        owner = customers_visible_to(request.user).filter(pk=exc.owner.pk).first()
        if owner:
            owner.label = customer_label(owner)
        return customer_page(
            request,
            customer,
            status=400,
            identity_errors=exc.messages,
            address_owner=owner,
            address_draft=(kind, address),
        )
    except ValidationError as exc:
        return customer_page(
            request,
            customer,
            status=400,
            identity_errors=exc.messages,
            address_draft=(kind, address),
        )
    messages.success(request, "Address added.")
    return redirect("inbox:customer", customer_id=customer.pk)


# What a typed phone number or part of one looks like: "(555) 200-0001", "+1 555 200".
PHONE_TYPED = re.compile(r"\+?[\d\s().-]+")


def addresses_matching(query: str) -> Q:
    """Identities whose address, as agents see it, contains `query` (not the opaque ids of
    chat visitors and Messenger users). A phone number is stored as +E.164, so a typed one
    ("(555) 200-0001", "+44 (0)20 7946 0958") is also looked for by its digits and whole."""
    addresses = Q(address__icontains=query)
    digits = re.sub(r"\D", "", query)
    if PHONE_TYPED.fullmatch(query) and len(digits) >= 4 and digits != query:
        phones = Q(address__icontains=digits.removeprefix("00"))  # the trigram index
        try:
            phones |= Q(address=services.phone_normalize(query))
        except ValidationError:
            pass
        addresses |= Q(kind__in=services.PHONE_CHANNELS) & phones
    return addresses & ~Q(kind__in=OPAQUE_ADDRESSES)


def _merge_candidates(user, customer, query: str) -> list:
    """Other customers this agent may see whose name or an address contains `query`, a phone
    number however it was typed."""
    addresses = addresses_matching(query)
    candidates = list(
        customers_visible_to(user)
        .exclude(pk=customer.pk)
        .filter(
            Q(folded_contains("name", query))
            | Q(pk__in=Identity.objects.filter(addresses).values("customer_id"))
        )
        .prefetch_related("identities")
        .order_by("name", "pk")[:CANDIDATES_LIMIT]
    )
    for candidate in candidates:
        candidate.label = customer_label(candidate)
    return candidates


@login_required
@require_http_methods(["GET", "POST"])
def customer_merge(request, customer_id: int):
    """GET: find the profile to merge this one into. POST (`into`, `confirm`): merge."""
    customer = customer_get_for_agent(user=request.user, customer_id=customer_id)
    if request.method == "GET":
        if customer.pk != customer_id:
            return redirect("inbox:customer", customer_id=customer.pk)
        query = request.GET.get("q", "").strip()[:200]
        candidates = _merge_candidates(request.user, customer, query) if query else []
        return customer_page(request, customer, merge_query=query, candidates=candidates)

    if customer.pk != customer_id:
        return customer_moved(request, customer)
    into = id_given(request.POST.get("into"))
    if into is None:
        return HttpResponseBadRequest("Choose the customer to merge into.")
    target = customer_get_for_agent(user=request.user, customer_id=into)
    if not request.POST.get("confirm"):
        messages.error(request, "Nothing was merged: tick the box to confirm the merge.")
        return redirect(reverse("inbox:customer_merge", args=[customer.pk]) + "#merge")
    # Named before the merge moves the addresses the labels may come from.
    source_label, target_label = customer_label(customer), customer_label(target)
    try:
        target = services.customer_merge(source=customer, target=target, actor=request.user)
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
        return redirect("inbox:customer", customer_id=customer.pk)
    messages.success(
        request,
        f"{source_label} (#{customer.pk}) was merged into {target_label} (#{target.pk}): "
        "one profile, both histories.",
    )
    return redirect("inbox:customer", customer_id=target.pk)
