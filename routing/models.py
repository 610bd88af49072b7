import threading
from contextlib import contextmanager
from datetime import time, timedelta
from time import monotonic

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import connection, models, transaction
from django.db.models import Q
from django.db.models.signals import post_delete, post_save
from django.utils.translation import gettext_lazy as _

from conversations.models import Channel, Conversation, Inbox, placeholders_check
from helpdesk.middleware import zone_names

# How much one open conversation of a channel weighs against an agent's capacity, unless the
# team says otherwise: a live chat wants the agent now, an email can wait its turn.
DEFAULT_CHANNEL_WEIGHTS = {Channel.WEBCHAT.value: 3}


class TableCache:
    """What this process made of a small configuration table (routing rules compiled to
    predicates, automations, SLA policies, which inboxes answer by themselves), kept until the
    table changes. Every read first asks where the table stands: rows, highest id and last
    save (`updated_at`, auto_now). A save, an addition or a deletion moves that mark, so an
    edit in admin applies to the next message in every process, without a restart; an UPDATE
    that bypasses save() is not seen. The mark is raw SQL: the ORM's aggregate would cost the
    message several times its round trip, several times over.

    `TableCache.snapshot()` (a received message is one) asks for every table's mark in one
    statement as it begins, and the block goes on with those: one round trip for all of them,
    and one configuration for the whole message.

    Tests clear every instance (`clear_all`) between tests: a rolled-back SQLite transaction
    hands out the same ids again, and frozen time the same `updated_at`."""

    instances: list["TableCache"] = []
    _snapshot = threading.local()

    def __init__(self, model: type[models.Model], build):
        self.model, self.build = model, build
        self._held: tuple = (None, None)  # (mark, value), replaced as one
        TableCache.instances.append(self)

    def get(self):
        marks = getattr(self._snapshot, "marks", None)
        if marks is not None and self in marks:
            mark = marks[self]
        else:  # outside a snapshot, or a cache made after it began
            (mark,) = self._marks([self])
        held, value = self._held
        if held != mark:  # two threads here at once only build the same value twice
            value = self.build()
            self._held = (mark, value)
        return value

    @staticmethod
    def _marks(caches) -> list[tuple]:
        quote = connection.ops.quote_name
        # Table names come from the models, quoted: nothing from outside. The first column
        # keeps the rows in the caches' order.
        sql = " UNION ALL ".join(
            f"SELECT {n}, COUNT(*), MAX(id), MAX(updated_at) "  # noqa: S608
            f"FROM {quote(cache.model._meta.db_table)}"
            for n, cache in enumerate(caches)
        )
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return [mark for _, *mark in sorted(cursor.fetchall())]

    @classmethod
    @contextmanager
    def snapshot(cls):
        """Check every table once, as the block begins (see the class docstring)."""
        if getattr(cls._snapshot, "marks", None) is not None or not cls.instances:
            yield  # nested: the outer block's marks hold
            return
        cls._snapshot.marks = dict(zip(cls.instances, cls._marks(cls.instances), strict=True))
        try:
            yield
        finally:
            cls._snapshot.marks = None

    @classmethod
    def clear_all(cls) -> None:
        for instance in cls.instances:
            instance._held = (None, None)


class ShortCache:
    """What this process read of rows asked for on nearly every request (a webhook's inbox,
    the inbox list's choices), kept for `seconds` per key. Saving or deleting any of `models`
    empties it in this process at once, and again once that transaction commits (a request in
    between may have read the rows as they were); other processes see the change within
    `seconds`. Unlike TableCache it asks the database nothing while it holds a value.

    `models` are classes, or "app_label.Model" where importing the class would be circular.
    At most MAX_KEYS keys: made-up keys (a webhook's inbox id) cannot grow it without bound.
    A `build` that raises caches nothing. Tests empty every instance (`clear_all`)."""

    MAX_KEYS = 1000
    instances: list["ShortCache"] = []

    def __init__(self, seconds: float, *models: type[models.Model] | str):
        self.seconds = seconds
        self._held: dict = {}  # key -> (expires, value)
        ShortCache.instances.append(self)
        for model in models:
            post_save.connect(self._changed, sender=model)
            post_delete.connect(self._changed, sender=model)

    def get(self, key, build):
        expires, value = self._held.get(key, (0.0, None))
        if expires < monotonic():
            value = build()
            if len(self._held) >= self.MAX_KEYS:
                self._held.clear()
            self._held[key] = (monotonic() + self.seconds, value)
        return value

    def clear(self) -> None:
        self._held.clear()

    def _changed(self, **kwargs) -> None:
        self.clear()
        transaction.on_commit(self.clear)

    @classmethod
    def clear_all(cls) -> None:
        for instance in cls.instances:
            instance.clear()


class Team(models.Model):
    """A group of agents who answer the conversations of the inboxes assigned to them."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    business_hours = models.ForeignKey(
        "BusinessHours",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="teams",
        help_text=_(
            "When the team works. An inbox's own schedule wins over its team's; none means "
            "always open."
        ),
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="TeamMembership", related_name="teams", blank=True
    )
    auto_assign = models.BooleanField(
        _("assign automatically"),
        default=True,
        help_text=_(
            "Give new and waiting conversations to online members with room, in turn. Off: "
            "they wait in the team's queue until someone takes them."
        ),
    )
    requeue_offline_chats = models.BooleanField(
        _("offline agents' chats return to the queue"),
        default=True,
        help_text=_(
            "When an agent goes offline (or closes the inbox for longer than a few minutes), "
            "their open live chats go back to the queue for someone online."
        ),
    )
    channel_weights = models.JSONField(
        default=dict,
        blank=True,
        help_text=_(
            "How much one open conversation counts against an agent's capacity, per channel, "
            'e.g. {"webchat": 3, "email": 1}. Channels not listed count 1, web chat 3.'
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)  # moves TableCache's mark (routing.hours)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def weight(self, channel: str) -> int:
        weights = {**DEFAULT_CHANNEL_WEIGHTS, **(self.channel_weights or {})}
        return weights.get(channel, 1)

    def clean(self):
        weights = self.channel_weights
        if not isinstance(weights, dict):
            raise ValidationError({"channel_weights": _("Give channel names with numbers.")})
        problems = [
            _("“%(name)s” is not a channel (use %(choices)s).")
            % {"name": name, "choices": ", ".join(Channel.values)}
            for name in weights
            if name not in Channel.values
        ] + [
            _("The weight of %(name)s must be a whole number from 1 to 100.") % {"name": name}
            for name, value in weights.items()
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100
        ]
        if problems:
            raise ValidationError({"channel_weights": problems})


class TeamMembership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="team_memberships"
    )
    is_lead = models.BooleanField(
        _("team lead"), default=False, help_text=_("Leads are told about SLA breaches.")
    )
    max_open = models.PositiveSmallIntegerField(
        _("capacity"),
        default=10,
        help_text=_(
            "Automatic assignment stops when the agent's open conversations weigh this much "
            "(each counts its channel's weight: by default a live chat 3, anything else 1)."
        ),
    )
    skills = models.CharField(
        max_length=300,
        blank=True,
        help_text=_(
            "Comma-separated, e.g. “pt, refunds”. A conversation tagged with a skill that "
            "someone in the team has goes only to members who have it."
        ),
    )
    # Round robin: the member with the lowest turn gets the next conversation. A counter, not
    # a time, so assignments within one clock tick still take turns.
    assigned_turn = models.PositiveBigIntegerField(default=0, editable=False)
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "user"], name="team_membership_unique")
        ]

    def __str__(self):
        return f"{self.user} in {self.team}"

    @property
    def skill_set(self) -> frozenset[str]:
        return tag_names(self.skills)


def tag_names(text: str) -> frozenset[str]:
    """Comma-separated names as conversation tags spell them (see conversation_tag)."""
    return frozenset(name.strip().lower()[:50] for name in (text or "").split(",") if name.strip())


MIDNIGHT = time(0, 0)


class BusinessHours(models.Model):
    """A weekly schedule in one time zone, with closed days. Teams and inboxes point at one;
    SLA clocks, expected reply times and the widget's online/offline state read it through
    `routing.hours`."""

    name = models.CharField(max_length=100, unique=True)
    timezone = models.CharField(
        max_length=64,
        help_text=_("An IANA time zone name, such as Europe/Lisbon or America/New_York."),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("business hours")
        verbose_name_plural = _("business hours")
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} ({self.timezone})"

    def clean(self):
        # The list of names, not just "ZoneInfo() loads it": that would also take the "right/"
        # zones (clocks that count leap seconds, out of step with everything else) and
        # "localtime" (whatever the machine happens to be set to).
        if self.timezone not in zone_names():
            raise ValidationError(
                {
                    "timezone": _(
                        "Unknown time zone “%(name)s”. Use an IANA name such as Europe/Lisbon "
                        "(names are case-sensitive)."
                    )
                    % {"name": self.timezone}
                }
            )


class BusinessInterval(models.Model):
    """One opening on one weekday, in the schedule's local wall time."""

    class Weekday(models.IntegerChoices):
        MONDAY = 0, _("Monday")
        TUESDAY = 1, _("Tuesday")
        WEDNESDAY = 2, _("Wednesday")
        THURSDAY = 3, _("Thursday")
        FRIDAY = 4, _("Friday")
        SATURDAY = 5, _("Saturday")
        SUNDAY = 6, _("Sunday")

    schedule = models.ForeignKey(BusinessHours, on_delete=models.CASCADE, related_name="intervals")
    weekday = models.SmallIntegerField(choices=Weekday.choices)
    opens = models.TimeField()
    closes = models.TimeField(
        help_text=_(
            "Later than the opening time; 00:00 means midnight at the end of the day. An "
            "overnight shift is two intervals: 22:00–00:00 on one day and 00:00–06:00 on the next."
        )
    )

    class Meta:
        ordering = ["weekday", "opens"]

    def __str__(self):
        return f"{self.get_weekday_display()} {self.opens:%H:%M}–{self.closes:%H:%M}"

    @property
    def span(self) -> tuple[timedelta, timedelta]:
        """Opening and closing as offsets from the day's midnight, so 00:00 closing is 24 h."""
        closes = timedelta(hours=24) if self.closes == MIDNIGHT else _offset(self.closes)
        return _offset(self.opens), closes

    def clean(self):
        if self.opens is None or self.closes is None:
            return  # the field errors say what is missing
        opens, closes = self.span
        if closes <= opens:
            raise ValidationError(
                {
                    "closes": _(
                        "Closing time must be later than the opening time. Enter an overnight "
                        "shift as two intervals (e.g. 22:00–00:00 and 00:00–06:00)."
                    )
                }
            )


def _offset(at: time) -> timedelta:
    return timedelta(hours=at.hour, minutes=at.minute, seconds=at.second)


class Holiday(models.Model):
    """A closed day: the whole local date, in the schedule's time zone, is closed."""

    schedule = models.ForeignKey(BusinessHours, on_delete=models.CASCADE, related_name="holidays")
    date = models.DateField()
    name = models.CharField(max_length=100, blank=True)

    class Meta:
        verbose_name = _("closed day")
        ordering = ["date"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "date"], name="holiday_unique_date")
        ]

    def __str__(self):
        return f"{self.date:%Y-%m-%d} {self.name}".strip()


class RoutingRule(models.Model):
    """When a new conversation meets all of `conditions`, set its team, priority, tags or
    assignee. Rules run in `position` order before any agent sees the conversation; the
    conditions' vocabulary and how they match is in `routing.rules`."""

    name = models.CharField(max_length=100)
    position = models.PositiveIntegerField(
        default=100, help_text=_("Rules run from the lowest number up.")
    )
    inbox = models.ForeignKey(
        Inbox,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="routing_rules",
        help_text=_("Empty: conversations of every inbox."),
    )
    is_active = models.BooleanField(_("active"), default=True)
    conditions = models.JSONField(default=list, blank=True)
    stop = models.BooleanField(
        _("stop at this rule when it matches"),
        default=True,
        help_text=_(
            "Ticked: the first matching rule decides and later rules are skipped. Unticked: "
            "later matching rules apply too (their team, priority or assignee replace this "
            "one's; tags add up)."
        ),
    )
    team = models.ForeignKey(
        Team,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="routing_rules",
        help_text=_("Move the conversation to this team (its queue and its agents)."),
    )
    priority = models.SmallIntegerField(
        null=True, blank=True, choices=Conversation.Priority.choices
    )
    tags = models.CharField(
        max_length=300, blank=True, help_text=_("Comma-separated tags to add, e.g. “refund, vip”.")
    )
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text=_(
            "Assign to this agent whatever their status or load (an account manager, say). "
            "Empty: automatic assignment picks an online member of the team with room."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self):
        return self.name

    def clean(self):
        errors = {}
        if problems := conditions_problems(self.conditions):
            errors["conditions"] = problems
        if len(tag_names(self.tags)) > 20:
            errors["tags"] = [_("Add at most 20 tags.")]
        if not (self.team_id or self.priority is not None or self.tags.strip() or self.assignee_id):
            errors["__all__"] = [
                _("Choose at least one thing to do: team, priority, tags or assignee.")
            ]
        if errors:
            raise ValidationError(errors)


# --- Automations and macros ------------------------------------------------------------------


# A longer wait is a typo (extra zeros), and one past ~17 million hours is a date Python
# cannot reach: the idle sweep failed on it, for every automation after it.
IDLE_HOURS_MAX = 24 * 365 * 10


class Automation(models.Model):
    """When `event` happens to a conversation that meets all of `conditions`, do `actions`.
    `routing.automations` runs them: the vocabulary of actions, the triggers, the loop guard
    and the periodic sweep for `idle`."""

    class Event(models.TextChoices):
        CREATED = "created", _("A customer opened a conversation")
        CUSTOMER_REPLIED = "customer_replied", _("The customer replied")
        STATUS_CHANGED = "status_changed", _("The status changed")
        ASSIGNED = "assigned", _("It was assigned to an agent")
        SLA_WARNING = "sla_warning", _("An SLA target is about to be missed")
        SLA_BREACH = "sla_breach", _("An SLA target was missed")
        IDLE = "idle", _("It stayed in a status for a time")

    name = models.CharField(max_length=100)
    position = models.PositiveIntegerField(
        default=100, help_text=_("Automations of the same event run from the lowest number up.")
    )
    is_active = models.BooleanField(_("active"), default=True)
    event = models.CharField(max_length=20, choices=Event.choices)
    idle_status = models.CharField(
        _("idle in status"),
        max_length=10,
        blank=True,
        choices=Conversation.Status.choices,
        help_text=_("For “stayed in a status”: which status."),
    )
    idle_hours = models.PositiveIntegerField(
        _("idle for hours"),
        null=True,
        blank=True,
        help_text=_(
            "For “stayed in a status”: how long since the conversation entered it (72 = 3 "
            "days). Acts at most once each time the conversation enters the status; if the "
            "conditions do not hold when the time is up, they are checked again every hour."
        ),
    )
    conditions = models.JSONField(default=list, blank=True)
    actions = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["event", "position", "id"]

    def __str__(self):
        return self.name

    def clean(self):
        errors = {}
        if problems := conditions_problems(self.conditions):
            errors["conditions"] = problems
        if problems := _actions_problems(self.actions):
            errors["actions"] = problems
        if self.event == self.Event.IDLE:
            if not self.idle_status:
                errors["idle_status"] = [_("Choose the status the conversation stays in.")]
            if not self.idle_hours:
                errors["idle_hours"] = [_("Say after how many hours (at least 1).")]
            elif self.idle_hours > IDLE_HOURS_MAX:
                errors["idle_hours"] = [
                    _("At most %(max)s hours (ten years).") % {"max": f"{IDLE_HOURS_MAX:,}"}
                ]
        elif self.idle_status or self.idle_hours:
            errors["idle_hours"] = [
                _("Only “stayed in a status” automations have a status and hours; clear them.")
            ]
        if errors:
            raise ValidationError(errors)


class AutomationRun(models.Model):
    """An idle automation checked a conversation for one stay in a status (`period`: when the
    conversation entered it), last at `ran_at`. Unique, so that however often and in however
    many workers the sweep runs, each stay is acted on once; `matched` says whether the
    actions ran (until then the stay is checked again, hourly)."""

    automation = models.ForeignKey(Automation, on_delete=models.CASCADE, related_name="runs")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="+")
    period = models.DateTimeField()
    matched = models.BooleanField()
    ran_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["automation", "conversation", "period"], name="automation_run_once"
            )
        ]

    def __str__(self):
        return f"{self.automation} on #{self.conversation_id}"


class Macro(models.Model):
    """A named list of actions an agent applies to a conversation in one click, from the
    conversation page. Same actions as automations, run by the same code."""

    name = models.CharField(max_length=100)
    team = models.ForeignKey(
        Team,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="macros",
        help_text=_("Only members of this team see it. Empty: every agent."),
    )
    is_active = models.BooleanField(_("active"), default=True)
    actions = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        if problems := _actions_problems(self.actions):
            raise ValidationError({"actions": problems})

    @property
    def replies(self) -> bool:
        """Whether applying it writes to the customer (the page asks before it does)."""
        return any(isinstance(a, dict) and a.get("action") == "reply" for a in self.actions)


def _actions_problems(actions) -> list[str]:
    from routing.automations import actions_compile, actions_references_check

    try:
        return actions_references_check(actions_compile(actions))
    except ValidationError as exc:
        return exc.messages


def conditions_problems(conditions) -> list[str]:
    """What is wrong with a rule's or automation's conditions: their form, else ids that name
    nothing. Empty when they are fine."""
    from routing.rules import conditions_compile

    try:
        conditions_compile(conditions)
    except ValidationError as exc:
        return exc.messages
    return references_unknown(conditions)


def references_unknown(conditions) -> list[str]:
    """Messages for inbox, team and agent ids in `conditions` that name nothing."""
    from django.contrib.auth import get_user_model

    models_by_field = {"inbox": Inbox, "team": Team, "assignee": get_user_model()}
    wanted: dict[str, set] = {}
    for condition in conditions:
        field = condition.get("field")
        if field in models_by_field and condition.get("value") is not None:
            value = condition["value"]
            wanted.setdefault(field, set()).update(value if isinstance(value, list) else [value])
    problems = []
    for field, ids in wanted.items():
        found = models_by_field[field].objects.filter(pk__in=ids).values_list("pk", flat=True)
        if missing := sorted(ids - set(found)):
            what = {"inbox": "inbox", "team": "team", "assignee": "agent"}[field]
            problems.append(
                _("No %(what)s has the id %(ids)s.")
                % {"what": what, "ids": ", ".join(map(str, missing))}
            )
    return problems


# A target longer than a year is a typo (an extra zero or five), not a promise.
SLA_MINUTES_MAX = 60 * 24 * 365
SLA_MINUTES_VALID = MaxValueValidator(
    SLA_MINUTES_MAX, _("At most %(limit_value)s minutes (a year).")
)
# A target of 0 would be breached as each conversation opens: empty is how one is not measured.
SLA_TARGET_VALID = MinValueValidator(
    1, _("At least 1 minute. Leave it empty not to measure this target.")
)

# Targets to start from, which admins tune (the first migration and the demo create them):
# people on chat, SMS and social expect an answer within minutes, email within a morning.
DEFAULT_SLA_POLICIES = [
    {
        "name": "Email",
        "channel": Channel.EMAIL.value,
        "first_response_minutes": 240,
        "next_response_minutes": 240,
        "warn_minutes": 30,
    },
    {
        "name": "Chat, SMS and social",
        "channel": "",
        "first_response_minutes": 15,
        "next_response_minutes": 15,
        "warn_minutes": 5,
    },
]


class SlaPolicy(models.Model):
    """Reply and resolution targets for conversations of one channel and priority.

    A conversation takes the most specific active policy: its priority and channel, else its
    priority on any channel, else its channel at any priority, else the catch-all (priority
    outranks channel: "urgent answers in 30 minutes" should hold for urgent emails too).
    A target left empty is not measured."""

    name = models.CharField(max_length=100)
    channel = models.CharField(
        max_length=20,
        choices=Channel.choices,
        blank=True,
        help_text=_("Empty: every channel without a policy of its own."),
    )
    priority = models.SmallIntegerField(
        null=True,
        blank=True,
        choices=Conversation.Priority.choices,
        help_text=_("Empty: every priority without a policy of its own."),
    )
    first_response_minutes = models.PositiveIntegerField(
        _("first response (minutes)"),
        null=True,
        blank=True,
        validators=[SLA_TARGET_VALID, SLA_MINUTES_VALID],
        help_text=_("From the customer's first message to the first reply."),
    )
    next_response_minutes = models.PositiveIntegerField(
        _("next response (minutes)"),
        null=True,
        blank=True,
        validators=[SLA_TARGET_VALID, SLA_MINUTES_VALID],
        help_text=_("From each later customer message to the reply that answers it."),
    )
    resolution_minutes = models.PositiveIntegerField(
        _("resolution (minutes)"),
        null=True,
        blank=True,
        validators=[SLA_TARGET_VALID, SLA_MINUTES_VALID],
        help_text=_("From opening (or reopening) to resolution."),
    )
    business_hours_only = models.BooleanField(
        _("count business hours only"),
        default=True,
        help_text=_(
            "Ticked: clocks run only while the inbox (or its team) is open, so 240 minutes is "
            "four working hours. Unticked: they run around the clock."
        ),
    )
    warn_minutes = models.PositiveIntegerField(
        _("warn before (minutes)"),
        default=5,
        validators=[SLA_MINUTES_VALID],
        help_text=_("The assignee (or the team leads) are warned this long before a target."),
    )
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("SLA policy")
        verbose_name_plural = _("SLA policies")
        ordering = ["channel", "priority", "name"]

    def __str__(self):
        return self.name

    def goal(self, target: str) -> int | None:
        """The target in seconds, or None when this policy does not measure it (nor a target
        saved around the admin's bounds: none, or one no clock can count that far)."""
        minutes = getattr(self, f"{target}_minutes")
        return None if not minutes or minutes > SLA_MINUTES_MAX else minutes * 60

    def clean(self):
        if not (self.first_response_minutes or self.next_response_minutes) and not (
            self.resolution_minutes
        ):
            raise ValidationError(_("Set at least one target."))
        shortest = min(
            m
            for m in (
                self.first_response_minutes,
                self.next_response_minutes,
                self.resolution_minutes,
            )
            if m
        )
        if self.warn_minutes is not None and self.warn_minutes >= shortest:
            # A warning due before the clock even starts would come with every message.
            raise ValidationError(
                {
                    "warn_minutes": _(
                        "Warn fewer minutes ahead than the shortest target (%(n)s minutes)."
                    )
                    % {"n": shortest}
                }
            )
        same = SlaPolicy.objects.filter(
            is_active=True, channel=self.channel, priority=self.priority
        ).exclude(pk=self.pk)
        if self.is_active and same.exists():
            raise ValidationError(
                _("“%(name)s” already covers this channel and priority; change that one.")
                % {"name": same.first().name}
            )


class SlaClock(models.Model):
    """One target being measured on one conversation: started by a customer message (or the
    opening), paused while the conversation waits on the customer, stopped by the reply (or
    the resolution) as met or breached. Finished clocks stay as the record for reports."""

    class Target(models.TextChoices):
        FIRST_RESPONSE = "first_response", _("First response")
        NEXT_RESPONSE = "next_response", _("Next response")
        RESOLUTION = "resolution", _("Resolution")

    class Outcome(models.TextChoices):
        MET = "met", _("Met")
        BREACHED = "breached", _("Breached")
        CANCELLED = "cancelled", _("Not measured")  # resolved or retargeted before an answer

    conversation = models.ForeignKey(  # sla_clock_conversation_idx leads with it
        Conversation, on_delete=models.CASCADE, related_name="sla_clocks", db_index=False
    )
    policy = models.ForeignKey(
        SlaPolicy, null=True, blank=True, on_delete=models.SET_NULL, related_name="clocks"
    )
    target = models.CharField(max_length=20, choices=Target.choices)
    channel = models.CharField(max_length=20, choices=Channel.choices)
    goal_seconds = models.PositiveIntegerField()
    business_hours_only = models.BooleanField(default=True)
    started_at = models.DateTimeField()
    # Counted seconds before `running_since`; the clock is paused or stopped when that is None.
    elapsed_seconds = models.FloatField(default=0)
    running_since = models.DateTimeField(null=True, blank=True)
    # When it runs out (None while paused, or when the schedule stays closed for a year).
    due_at = models.DateTimeField(null=True, blank=True)
    warn_at = models.DateTimeField(null=True, blank=True)
    warned_at = models.DateTimeField(null=True, blank=True)
    breached_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, blank=True)

    class Meta:
        verbose_name = _("SLA clock")
        ordering = ["started_at", "id"]
        indexes = [
            models.Index(fields=["conversation", "stopped_at"], name="sla_clock_conversation_idx"),
            # What the sweep looks for: running clocks due a warning or past their target.
            models.Index(
                fields=["warn_at"],
                name="sla_clock_warn_idx",
                condition=Q(stopped_at=None, warned_at=None),
            ),
            models.Index(
                fields=["due_at"],
                name="sla_clock_due_idx",
                condition=Q(stopped_at=None, breached_at=None),
            ),
        ]

    def __str__(self):
        return f"{self.get_target_display()} on #{self.conversation_id}"

    @property
    def state(self) -> str:
        """running, paused, or how it ended (met, breached, cancelled)."""
        if self.stopped_at:
            return self.outcome
        return "paused" if self.running_since is None else "running"

    @property
    def remaining_seconds(self) -> float:
        """What was left of the target when the clock last paused or stopped."""
        return max(0.0, self.goal_seconds - self.elapsed_seconds)


class AutoReply(models.Model):
    """What an inbox says by itself: an acknowledgement of a new conversation, an
    out-of-office reply while it is closed, or a satisfaction survey once an agent's answer
    resolved it. Written per language; the customer gets the one in their language, else the
    one without a language."""

    class Kind(models.TextChoices):
        ACKNOWLEDGEMENT = "acknowledgement", _("Acknowledgement of a new conversation")
        OUT_OF_OFFICE = "out_of_office", _("Out-of-office reply")
        SATISFACTION = "satisfaction", _("Satisfaction survey, once resolved")

    # Placeholders a template may use, filled in when it is sent.
    PLACEHOLDERS = ("number", "name", "expected_reply", "opens_at", "inbox", "rating_link")
    # Inboxes that say nothing by themselves: the widget says it all (and rates), and an API
    # inbox's integration speaks to its own users.
    SILENT_INBOXES = (Channel.WEBCHAT, Channel.API)

    inbox = models.ForeignKey(Inbox, on_delete=models.CASCADE, related_name="auto_replies")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    language = models.CharField(
        max_length=10,
        blank=True,
        help_text=_("e.g. pt or pt-BR. Empty: for customers whose language has no template."),
    )
    body = models.TextField(
        help_text=_(
            "Plain text. {number} is the conversation number, {name} the customer's name, "
            "{expected_reply} how soon we usually answer (e.g. “2 hours”), {opens_at} "
            "when the inbox opens next, {inbox} its name, {rating_link} (a survey's) the page "
            "where the customer rates the conversation from 1 to 5."
        )
    )
    is_active = models.BooleanField(_("active"), default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("automatic reply")
        verbose_name_plural = _("automatic replies")
        ordering = ["inbox", "kind", "language"]
        constraints = [
            models.UniqueConstraint(
                fields=["inbox", "kind", "language"], name="auto_reply_unique_language"
            )
        ]

    def __str__(self):
        return f"{self.get_kind_display()} ({self.language or _('any language')})"

    @staticmethod
    def language_written(language: str) -> str:
        """The one way a template's language is written: "FR" and "fr" are one language, and
        two templates for it would be sent at random. ValidationError if it is none."""
        from conversations.services import language_normalize

        language = (language or "").strip()
        return language_normalize(language) if language else ""

    def clean(self):
        try:
            self.language = self.language_written(self.language)
        except ValidationError as exc:
            raise ValidationError({"language": exc.messages}) from None
        # Anything in braces: a placeholder of another kind (a canned response's
        # {customer.first_name|there}) would reach the customer as written.
        placeholders_check(self.body, self.PLACEHOLDERS, r"{([^{}]*)}")
        if (self.kind == self.Kind.SATISFACTION) != ("{rating_link}" in self.body):
            raise ValidationError(
                {
                    "body": _("A satisfaction survey needs {rating_link}, and only a survey.")
                    if self.kind == self.Kind.SATISFACTION
                    else _("{rating_link} goes in a satisfaction survey only.")
                }
            )
        if self.inbox_id and self.inbox.kind == Channel.WEBCHAT:
            raise ValidationError(
                _("The chat widget says itself when you are away and how soon you reply.")
            )
        if self.inbox_id and self.inbox.kind == Channel.API:
            raise ValidationError(
                _("An API inbox sends no automatic replies: its integration answers its users.")
            )
