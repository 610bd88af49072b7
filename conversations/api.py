"""The REST API for integrators, `/api/v1/`: conversations and customers, read and worked on as
an agent would in the inbox. Every view asks `selectors` who may see what (a conversation
someone may not see is a 404, like one that does not exist) and writes through `services`,
as the inbox pages do. One APIView per operation, with its input and output serializers.

Signed in by a personal token (helpdesk.tokens) or, from our own pages, by the session (with
its CSRF check)."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.http import Http404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from conversations import services
from conversations.models import Attachment, Channel, Conversation, Message
from conversations.selectors import (
    ID_MAX,
    conversation_get_for_agent,
    conversations_visible_to,
    customer_get_for_agent,
    customers_visible_to,
    datetime_given,
    id_given,
)

# The inbox's own assignment rule (to someone who may see the conversation) and file download.
from conversations.views import attachment_as_download
from helpdesk.models import User
from routing.models import Team

Status = Conversation.Status
PAGE_SIZE = 50
PAGE_SIZE_MAX = 100
# A conversation's messages shown with it; a long chat's whole history is paged (MessageListApi).
MESSAGES_INLINE = 100
CLIENT_ID_MAX = 64  # Message.client_id
# Priorities by name, as integrators write them ("urgent"), not the numbers stored.
PRIORITIES = {choice.name.lower(): choice.value for choice in Conversation.Priority}
PRIORITY_NAMES = {value: name for name, value in PRIORITIES.items()}


# --- Output ------------------------------------------------------------------------------------


class UtcDateTime(serializers.DateTimeField):
    """Times in UTC both ways, whatever TIME_ZONE or the agent's browser says: a time given
    without an offset is UTC, and every time answered ends in Z."""

    def __init__(self, **kwargs):
        super().__init__(default_timezone=UTC, **kwargs)


class NamedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class InboxOutput(NamedSerializer):
    kind = serializers.CharField()


class AgentOutput(NamedSerializer):
    email = serializers.EmailField()


class PriorityField(serializers.ChoiceField):
    """The priority by name both ways: "urgent", never 3."""

    def __init__(self, **kwargs):
        super().__init__(choices=list(PRIORITIES), **kwargs)

    def to_representation(self, value):
        return PRIORITY_NAMES[value]

    def to_internal_value(self, data):
        return PRIORITIES[super().to_internal_value(data)]


class ConversationOutput(serializers.Serializer):
    id = serializers.IntegerField(help_text="The conversation's number, as the inbox shows it.")
    subject = serializers.CharField()
    status = serializers.ChoiceField(choices=Status.choices)
    priority = PriorityField()
    inbox = InboxOutput()
    customer = NamedSerializer()
    team = NamedSerializer(allow_null=True)
    assignee = AgentOutput(allow_null=True)
    tags = serializers.SerializerMethodField()
    created_at = UtcDateTime()
    updated_at = UtcDateTime()
    last_activity_at = UtcDateTime()
    waiting_since = UtcDateTime(
        allow_null=True, help_text="Since when the customer waits on us; null: nobody waits."
    )
    first_response_at = UtcDateTime(allow_null=True)
    resolved_at = UtcDateTime(allow_null=True)
    snoozed_until = UtcDateTime(allow_null=True)
    sla_due_at = UtcDateTime(allow_null=True)

    def get_tags(self, conversation) -> list[str]:
        return sorted(tag.name for tag in conversation.tags.all())


class AttachmentOutput(serializers.Serializer):
    id = serializers.IntegerField()
    filename = serializers.CharField()
    content_type = serializers.CharField()
    size = serializers.IntegerField()
    url = serializers.SerializerMethodField(
        help_text="Where to download it, with the same credentials; null until it is fetched."
    )

    def get_url(self, attachment) -> str | None:
        if not attachment.file:
            return None
        path = reverse("api:attachment", args=[attachment.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path


class MessageOutput(serializers.Serializer):
    id = serializers.IntegerField()
    direction = serializers.ChoiceField(
        choices=Message.Direction.choices, help_text="`note`: internal, never sent."
    )
    channel = serializers.CharField()
    status = serializers.CharField(
        help_text="Delivery of a reply: queued, sending, sent, delivered, read or failed."
    )
    failure_reason = serializers.CharField()
    author = AgentOutput(allow_null=True, help_text="The agent who wrote it.")
    address = serializers.CharField(
        source="identity.shown_address",
        allow_null=True,
        default=None,
        help_text="The customer's address it came from or went to, as agents see it.",
    )
    text = serializers.CharField()
    html = serializers.CharField(help_text="Sanitised HTML, when the channel sent some.")
    client_id = serializers.CharField()
    attachments = AttachmentOutput(many=True)
    created_at = UtcDateTime()
    sent_at = UtcDateTime(allow_null=True)
    delivered_at = UtcDateTime(allow_null=True)
    read_at = UtcDateTime(allow_null=True)


def _messages(conversation):
    return conversation.messages.select_related("author", "identity").prefetch_related(
        "attachments"
    )


class ConversationDetailOutput(ConversationOutput):
    messages = serializers.SerializerMethodField(
        help_text=f"The last {MESSAGES_INLINE} messages and notes, oldest first; the whole "
        "history, page by page, is at `messages_url`."
    )
    messages_url = serializers.SerializerMethodField()

    @extend_schema_field(MessageOutput(many=True))
    def get_messages(self, conversation) -> list[dict]:
        last = list(_messages(conversation).order_by("-id")[:MESSAGES_INLINE])[::-1]
        return MessageOutput(last, many=True, context=self.context).data

    def get_messages_url(self, conversation) -> str:
        path = reverse("api:messages", args=[conversation.pk])
        return self.context["request"].build_absolute_uri(path)


class IdentityOutput(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    address = serializers.CharField(
        source="shown_address",
        help_text="As agents see it: an API inbox's user by the id their integration gave, "
        "a chat visitor's opaque id not at all (empty).",
    )
    display_name = serializers.CharField()
    verified = serializers.BooleanField()


class CustomerOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    language = serializers.CharField()
    timezone = serializers.CharField()
    attributes = serializers.DictField()
    notes = serializers.CharField()
    blocked_at = UtcDateTime(allow_null=True)
    created_at = UtcDateTime()
    updated_at = UtcDateTime()
    identities = IdentityOutput(many=True)


def _page_of(output, name: str):
    """The schema of a page of `output`: its rows, and the link to the next page."""
    return inline_serializer(
        name=name,
        fields={
            "next": serializers.URLField(
                allow_null=True, help_text="The next page, with the same filters; null: no more."
            ),
            "results": output(many=True),
        },
    )


# --- Input -------------------------------------------------------------------------------------


class StrictInput(serializers.Serializer):
    """Input that names only known fields: a misspelt filter or field is an error, never
    quietly ignored (an integrator would read "everything" for "what I asked for")."""

    def to_internal_value(self, data):
        known = ", ".join(sorted(self.fields))
        unknown = {
            name: [f"Unknown field; known ones: {known}."]
            for name in sorted(set(data if isinstance(data, dict) else ()) - set(self.fields))
        }
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({**unknown, **exc.detail}) from exc
        if unknown:
            raise serializers.ValidationError(unknown)
        return value


class PageQuery(StrictInput):
    cursor = serializers.CharField(
        required=False, help_text="From the previous page's `next`; leave out for the first."
    )
    page_size = serializers.IntegerField(
        required=False, min_value=1, max_value=PAGE_SIZE_MAX, default=PAGE_SIZE
    )


def _id_field(**kwargs):
    return serializers.IntegerField(min_value=1, max_value=ID_MAX, **kwargs)


def _query(serializer_class, request) -> dict:
    query = serializer_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data


# --- Keyset pagination: a page starts after the sort values of the previous page's last row,
# not at an OFFSET, so rows added or taken away ahead of it shift nothing. In ordering
# `updated_at`, a conversation that changes while a client pages is read again at the end:
# never missed.


def _cursor_encode(ordering: str, row, fields) -> str:
    values = [getattr(row, name) for name, _ in fields]
    values = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps([ordering, *values]).encode()).decode()


def _cursor_decode(cursor: str, ordering: str, fields) -> list:
    refused = serializers.ValidationError(
        {"cursor": ["Not a cursor of this list and ordering: use the `next` link as it is."]}
    )
    try:
        given = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError):
        raise refused from None
    if not isinstance(given, list) or given[:1] != [ordering] or len(given) != len(fields) + 1:
        raise refused
    values = []
    for (name, _), value in zip(fields, given[1:], strict=True):
        value = id_given(value) if name == "id" else _cursor_time(value)
        if value is None:
            raise refused
        values.append(value)
    return values


def _cursor_time(value) -> datetime | None:
    """A time as _cursor_encode wrote it: with its offset, and within what the databases hold
    once in UTC (year 1 at +14:00 is not, and SQLite's adapter raised OverflowError)."""
    value = datetime_given(value)
    if value is None or value.tzinfo is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return None


def _page(request, rows, *, ordering: str, fields, output, page_size: int, cursor: str = ""):
    if cursor:
        rows = rows.filter(_after(fields, _cursor_decode(cursor, ordering, fields)))
    rows = list(
        rows.order_by(*[f"-{name}" if desc else name for name, desc in fields])[: page_size + 1]
    )
    following = None
    if len(rows) > page_size:
        rows = rows[:page_size]
        query = request.query_params.copy()
        query["cursor"] = _cursor_encode(ordering, rows[-1], fields)
        following = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
    context = {"request": request}
    return Response({"next": following, "results": output(rows, many=True, context=context).data})


def _after(fields, values) -> Q:
    """Rows strictly after the cursor in this ordering."""
    (name, descending), *rest = fields
    beyond = Q(**{f"{name}__{'lt' if descending else 'gt'}": values[0]})
    if not rest:
        return beyond
    return beyond | (Q(**{name: values[0]}) & _after(rest, values[1:]))


def _refusal(exc: ValidationError) -> Response:
    """A service's refusal (no address to reply to, a closed messaging window...), as `detail`."""
    return Response({"detail": "; ".join(exc.messages)}, status=status.HTTP_400_BAD_REQUEST)


# --- Conversations -----------------------------------------------------------------------------

# Orderings of the conversation list: the fields of the keyset, in that order. `updated_at`
# (oldest change first) is the one to sync by: with `updated_after`, every change shows up.
ORDERINGS = {
    "-updated_at": [("updated_at", True), ("id", True)],
    "updated_at": [("updated_at", False), ("id", False)],
    "-last_activity_at": [("last_activity_at", True), ("id", True)],
    "-id": [("id", True)],
    "id": [("id", False)],
}


class ConversationListApi(APIView):
    class Query(PageQuery):
        status = serializers.ChoiceField(choices=Status.choices, required=False)
        inbox = _id_field(required=False)
        team = _id_field(required=False)
        assignee = serializers.CharField(
            required=False, help_text="An agent's id, or `none` for unassigned ones."
        )
        updated_after = UtcDateTime(required=False, help_text="ISO 8601; without an offset, UTC.")
        ordering = serializers.ChoiceField(
            choices=list(ORDERINGS), required=False, default="-updated_at"
        )

        def validate_assignee(self, value):
            if value != "none" and id_given(value) is None:
                raise serializers.ValidationError("An agent's id, or `none`.")
            return value

    @extend_schema(
        operation_id="conversations_list",
        parameters=[Query],
        responses=_page_of(ConversationOutput, "ConversationPage"),
    )
    def get(self, request):
        query = _query(self.Query, request)
        rows = conversations_visible_to(request.user)
        if "status" in query:
            rows = rows.filter(status=query["status"])
        for name in ("inbox", "team"):
            if name in query:
                rows = rows.filter(**{f"{name}_id": query[name]})
        if assignee := query.get("assignee"):
            rows = rows.filter(assignee_id=id_given(assignee))  # None for "none"
        if "updated_after" in query:
            rows = rows.filter(updated_at__gt=query["updated_after"])
        rows = (
            rows.select_related("inbox", "customer", "team", "assignee")
            .defer("inbox__settings", "inbox__credentials", "customer__attributes")
            .prefetch_related("tags")
        )
        return _page(
            request,
            rows,
            ordering=query["ordering"],
            fields=ORDERINGS[query["ordering"]],
            output=ConversationOutput,
            page_size=query["page_size"],
            cursor=query.get("cursor", ""),
        )


# A tag's name as the inbox's tag field takes it (a comma there separates two tags); a new
# field each time: a field belongs to one serializer.
def _tag():
    return serializers.RegexField(
        r"^[^,]+$", max_length=50, error_messages={"invalid": "A tag's name has no commas."}
    )


class ConversationDetailApi(APIView):
    class Change(StrictInput):
        """What an agent may change on a conversation here, as on its page: nothing else."""

        status = serializers.ChoiceField(choices=Status.choices, required=False)
        snoozed_until = UtcDateTime(
            required=False,
            help_text="With status `snoozed`: until when (ISO 8601; without an offset, UTC).",
        )
        priority = PriorityField(required=False)
        assignee = _id_field(
            required=False, allow_null=True, help_text="An agent's id; null unassigns."
        )
        team = _id_field(
            required=False,
            help_text="Transfer to this team; an assignee outside it lets go of the conversation.",
        )

        tags_add = serializers.ListField(
            child=_tag(),
            max_length=20,
            required=False,
            help_text="Tags to add (new names make new tags); case is ignored.",
        )
        tags_remove = serializers.ListField(child=_tag(), max_length=20, required=False)

        def validate(self, attrs):
            if not attrs:
                raise serializers.ValidationError("Give at least one field to change.")
            if "snoozed_until" in attrs and attrs.get("status") != Status.SNOOZED:
                raise serializers.ValidationError(
                    {"snoozed_until": ["A snooze time goes with the status `snoozed`."]}
                )
            return attrs

    @extend_schema(operation_id="conversations_retrieve", responses=ConversationDetailOutput)
    def get(self, request, number: int):
        conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
        return Response(ConversationDetailOutput(conversation, context={"request": request}).data)

    @extend_schema(
        operation_id="conversations_update",
        request=Change,
        responses={200: ConversationOutput, 400: OpenApiResponse(description="Refused")},
    )
    def patch(self, request, number: int):
        conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
        change = self.Change(data=request.data)
        change.is_valid(raise_exception=True)
        data, actor = change.validated_data, request.user
        # All or nothing: a refusal of one field (a merged conversation, an agent outside the
        # team) leaves the others as they were. The services' own events and notifications are
        # sent on commit, so a rolled-back change tells nobody.
        try:
            with transaction.atomic():
                if "team" in data:
                    team = Team.objects.filter(pk=data["team"]).first()
                    if team is None:
                        raise ValidationError({"team": "No such team."})
                    conversation = services.conversation_set_team(
                        conversation=conversation, team=team, actor=actor, unassign_outsider=True
                    )
                if "assignee" in data:
                    assignee = None
                    if data["assignee"] is not None:
                        assignee = User.objects.filter(pk=data["assignee"], is_active=True).first()
                        if assignee is None:
                            raise ValidationError({"assignee": "No active agent with this id."})
                    conversation = _field(
                        "assignee",
                        services.agent_assign,
                        conversation,
                        assignee=assignee,
                        actor=actor,
                    )
                if "status" in data:
                    conversation = _field(
                        "status",
                        services.conversation_set_status,
                        conversation,
                        status=data["status"],
                        snoozed_until=data.get("snoozed_until"),
                        actor=actor,
                    )
                if "priority" in data:
                    conversation = _field(
                        "priority",
                        services.conversation_set_priority,
                        conversation,
                        priority=data["priority"],
                        actor=actor,
                    )
                if "tags_add" in data or "tags_remove" in data:
                    conversation = _field(
                        "tags_add" if "tags_add" in data else "tags_remove",
                        services.conversation_tag,
                        conversation,
                        add=data.get("tags_add", ()),
                        remove=data.get("tags_remove", ()),
                        actor=actor,
                    )
        except ValidationError as exc:
            if hasattr(exc, "error_dict"):
                return Response(exc.message_dict, status=status.HTTP_400_BAD_REQUEST)
            return _refusal(exc)
        conversation.refresh_from_db()
        # Shown even if the change took it out of the agent's sight (a transfer): it is what
        # they just did.
        return Response(ConversationOutput(conversation, context={"request": request}).data)


def _field(name: str, service, conversation, **kwargs):
    """`service` on `conversation`; its refusal is said under `name`."""
    try:
        return service(conversation=conversation, **kwargs)
    except ValidationError as exc:
        raise ValidationError({name: exc.messages}) from exc


def _client_id(request, given: str) -> str:
    """The id that makes a retried POST harmless: the `Idempotency-Key` header, or the
    body's `client_id`."""
    header = request.headers.get("Idempotency-Key", "").strip()
    if len(header) > CLIENT_ID_MAX:
        raise serializers.ValidationError(
            {"Idempotency-Key": [f"At most {CLIENT_ID_MAX} characters."]}
        )
    if header and given and header != given:
        raise serializers.ValidationError(
            {"client_id": ["Differs from the Idempotency-Key header: give one of them."]}
        )
    return header or given


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    location=OpenApiParameter.HEADER,
    required=False,
    description="Sent again with the same key (up to 64 characters), the request changes "
    "nothing and answers 200 with what the first one made.",
)


class MessageInput(StrictInput):
    """A reply or note: JSON, or multipart/form-data when it carries files."""

    text = serializers.CharField(
        trim_whitespace=False, max_length=100_000, required=False, allow_blank=True, default=""
    )
    files = serializers.ListField(
        child=serializers.FileField(),
        required=False,
        max_length=services.ATTACHMENTS_MAX,
        help_text="Attachments (multipart/form-data, one `files` part each): images, PDF, plain "
        "text and CSV, by their content, 10 MB each, within what the channel takes.",
    )
    client_id = serializers.CharField(
        required=False,
        default="",
        max_length=CLIENT_ID_MAX,
        help_text="Your id for this message: sent again, it is not sent twice.",
    )


class Writing(APIView):
    """Replies and notes: JSON, or multipart/form-data with files."""

    parser_classes = [JSONParser, MultiPartParser]

    @staticmethod
    def attachments(given) -> tuple[services.InboundAttachment, ...]:
        """The files of `given` (a MessageInput), checked as the inbox's composer checks them:
        a refusal is said under `files`."""
        try:
            return services.uploads_check(given.validated_data.get("files", []))
        except ValidationError as exc:
            raise serializers.ValidationError({"files": exc.messages}) from exc


def _written(request, conversation, once: str, direction) -> Message | None:
    """What this request made already, when it is sent again. A key that made something else
    is refused: a chat visitor chooses their own messages' ids, and taking theirs for this
    one would answer "sent" for a reply that never goes."""
    written = conversation.messages.filter(client_id=once).first() if once else None
    if written and (written.direction != direction or written.author_id != request.user.pk):
        raise ValidationError(
            "This Idempotency-Key (client_id) was already used for another message in this "
            "conversation: give each message its own."
        )
    return written


def _message_response(request, message, *, created: bool, **extra) -> Response:
    body = MessageOutput(message, context={"request": request}).data
    code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return Response({**body, **extra}, status=code)


class MessageListApi(APIView):
    @extend_schema(
        operation_id="conversations_messages_list",
        parameters=[PageQuery],
        responses=_page_of(MessageOutput, "MessagePage"),
    )
    def get(self, request, number: int):
        """A conversation's messages and notes, oldest first."""
        query = _query(PageQuery, request)
        conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
        return _page(
            request,
            _messages(conversation),
            ordering="id",
            fields=[("id", False)],
            output=MessageOutput,
            page_size=query["page_size"],
            cursor=query.get("cursor", ""),
        )


class ReplyCreateApi(Writing):
    class Input(MessageInput):
        identity = _id_field(
            required=False,
            help_text="The customer's address (an identity's id) to reply on; default: where "
            "they last wrote.",
        )

    @extend_schema(
        operation_id="conversations_reply",
        parameters=[IDEMPOTENCY_KEY],
        request=Input,
        responses={201: MessageOutput, 200: MessageOutput},
    )
    def post(self, request, number: int):
        """A reply to the customer, queued for delivery on their channel (`status` follows it:
        queued, sent, delivered, failed with `failure_reason`)."""
        conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
        given = self.Input(data=request.data)
        given.is_valid(raise_exception=True)
        once = _client_id(request, given.validated_data["client_id"])
        try:
            sent = _written(request, conversation, once, Message.Direction.OUTBOUND)
        except ValidationError as exc:
            return _refusal(exc)
        if sent:
            return _message_response(request, sent, created=False)
        attachments = self.attachments(given)
        identity = None
        if (pk := given.validated_data.get("identity")) is not None:
            identity = conversation.customer.identities.filter(pk=pk).first()
            if identity is None:
                return Response(
                    {"identity": ["That address is not this customer's."]},
                    status=status.HTTP_400_BAD_REQUEST,
                )
        try:
            message = services.reply_send(
                conversation=conversation,
                author=request.user,
                text=given.validated_data["text"],
                identity=identity,
                client_id=once,
                attachments=attachments,
            )
        except ValidationError as exc:
            return _refusal(exc)
        return _message_response(request, message, created=True)


class NoteOutput(MessageOutput):
    mentions_missed = serializers.ListField(
        child=serializers.CharField(), help_text="@names in the text that reached no agent."
    )


class NoteCreateApi(Writing):
    @extend_schema(
        operation_id="conversations_note",
        parameters=[IDEMPOTENCY_KEY],
        request=MessageInput,
        responses={201: NoteOutput, 200: NoteOutput},
    )
    def post(self, request, number: int):
        """An internal note: agents see it, the customer never does. @name mentions notify."""
        conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
        given = MessageInput(data=request.data)
        given.is_valid(raise_exception=True)
        once = _client_id(request, given.validated_data["client_id"])
        try:
            written = _written(request, conversation, once, Message.Direction.NOTE)
        except ValidationError as exc:
            return _refusal(exc)
        if written:
            return _message_response(request, written, created=False, mentions_missed=[])
        attachments = self.attachments(given)
        try:
            note = services.note_add(
                conversation=conversation,
                author=request.user,
                text=given.validated_data["text"],
                client_id=once,
                attachments=attachments,
            )
        except ValidationError as exc:
            return _refusal(exc)
        return _message_response(request, note, created=True, mentions_missed=note.mentions_missed)


class AttachmentDownloadApi(APIView):
    @extend_schema(
        operation_id="attachments_download",
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
    )
    def get(self, request, attachment_id: int):
        """The file, as a download, to someone who may see its conversation."""
        visible = conversations_visible_to(request.user)
        attachment = (
            Attachment.objects.filter(pk=attachment_id, message__conversation__in=visible)
            .exclude(file="")
            .first()
        )
        if attachment is None:
            raise Http404("No such attachment")
        return attachment_as_download(attachment)


# --- Customers ---------------------------------------------------------------------------------

CUSTOMER_ORDER = [("id", False)]


class CustomerListApi(APIView):
    class Query(PageQuery):
        address = serializers.CharField(
            required=False,
            max_length=320,
            help_text="Only the one with this address (email, phone...).",
        )

    @extend_schema(
        operation_id="customers_list",
        parameters=[Query],
        responses=_page_of(CustomerOutput, "CustomerPage"),
    )
    def get(self, request):
        query = _query(self.Query, request)
        rows = customers_visible_to(request.user).prefetch_related("identities")
        if address := query.get("address", "").strip():
            # An API inbox's user is stored under their inbox (inbox_scoped_address).
            scoped = Q(
                identities__kind=Channel.API,
                identities__address__iregex=(r"^[0-9]+:" + re.escape(address) + "$"),
            )
            rows = rows.filter(Q(identities__address__iexact=address) | scoped).distinct()
        return _page(
            request,
            rows,
            ordering="id",
            fields=CUSTOMER_ORDER,
            output=CustomerOutput,
            page_size=query["page_size"],
            cursor=query.get("cursor", ""),
        )


class CustomerDetailApi(APIView):
    @extend_schema(operation_id="customers_retrieve", responses=CustomerOutput)
    def get(self, request, customer_id: int):
        """A profile merged into another answers with that other one (its `id` says so)."""
        customer = customer_get_for_agent(user=request.user, customer_id=customer_id)
        return Response(CustomerOutput(customer, context={"request": request}).data)
