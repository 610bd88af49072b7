import json
import threading
from datetime import timedelta

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.forms.models import BaseInlineFormSet
from django.utils import dateformat, timezone
from django.utils.html import escape, format_html_join

from conversations.models import CannedResponse, Channel, Conversation, Inbox
from helpdesk.admin import KeptWhileUsed, open_count
from helpdesk.middleware import zone_named
from helpdesk.models import User
from routing import automations, hours, rules, sla
from routing.models import (
    Automation,
    BusinessHours,
    BusinessInterval,
    Holiday,
    Macro,
    RoutingRule,
    SlaClock,
    SlaPolicy,
    Team,
    TeamMembership,
)


class ClocksFollow:
    """For pages whose changes move running SLA clocks (a schedule, a policy): what a clock
    counted up to the change stays counted under the rules it had, the rest counts under the
    new ones, and its due time follows (routing.sla.sla_clocks_hold and _resume). All in the
    save's transaction."""

    def clocks_moved_by(self, obj, form):
        """The clocks `obj`'s change may move, or None."""
        raise NotImplementedError

    def save_model(self, request, obj, form, change):
        clocks = self.clocks_moved_by(obj, form)
        request.clocks_held = sla.sla_clocks_hold(clocks) if clocks is not None else []
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)  # a schedule's days are inlines
        sla.sla_clocks_resume(getattr(request, "clocks_held", []))


class TeamMembershipInline(admin.TabularInline):
    model = TeamMembership
    extra = 0
    autocomplete_fields = ["user"]
    fields = ["user", "is_lead", "max_open", "skills"]


@admin.register(Team)
class TeamAdmin(ClocksFollow, KeptWhileUsed, admin.ModelAdmin):
    list_display = ["name", "slug", "business_hours", "member_count", "auto_assign", "queue"]
    list_select_related = ["business_hours"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["queue"]
    fields = [
        "name",
        "slug",
        "description",
        "business_hours",
        "auto_assign",
        "requeue_offline_chats",
        "channel_weights",
        "queue",
    ]
    inlines = [TeamMembershipInline]

    def clocks_moved_by(self, team, form):
        if "business_hours" not in form.changed_data or not team.pk:
            return None
        # Its conversations count on its hours where their inbox has none (schedule_for).
        return SlaClock.objects.filter(
            Q(conversation__team=team)
            | Q(conversation__team=None, conversation__inbox__default_team=team),
            business_hours_only=True,
            conversation__inbox__business_hours=None,
        )

    def in_use(self, team):
        reasons = open_count(team.conversations, f"in {team}: transfer them to another team first")
        reasons += [f"Inbox “{i.name}” gives {team} its conversations" for i in team.inboxes.all()]
        using = automations.actions_naming("team", team.pk)
        reasons += [f"{user} moves conversations to {team}" for user in using]
        using = automations.conditions_naming("team", team.pk)
        return reasons + [f"{user} looks for {team} in its conditions" for user in using]

    def get_queryset(self, request):
        waiting = (
            Conversation.objects.filter(
                team=OuterRef("pk"), status=Conversation.Status.OPEN, assignee=None
            )
            .order_by()
            .values("team")
            .annotate(count=Count("id"))
            .values("count")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(_members=Count("memberships"), _waiting=Coalesce(Subquery(waiting), 0))
        )

    @admin.display(description="members", ordering="_members")
    def member_count(self, team):
        return team._members

    @admin.display(description="waiting now", ordering="_waiting")
    def queue(self, team):
        return getattr(team, "_waiting", "-")


class RowsField(forms.JSONField):
    """A JSON list of conditions or actions, one per line, so that a long list stays readable."""

    def prepare_value(self, value):
        if value is None:  # a new rule: an empty list to fill in, not "null"
            return "[]"
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            lines = ",\n".join("  " + json.dumps(item, ensure_ascii=False) for item in value)
            return f"[\n{lines}\n]"
        return super().prepare_value(value)


# How the editors of conditions and actions (static/rule_rows.js) word each choice.
OPERATORS = {
    "is": "is",
    "is_not": "is not",
    "in": "is any of",
    "not_in": "is none of",
    "contains": "contains",
    "not_contains": "does not contain",
    "starts_with": "starts with",
    "like": "matches the pattern",
    "not_like": "does not match the pattern",
    "gt": "is more than",
    "gte": "is at least",
    "lt": "is less than",
    "lte": "is at most",
    "exists": "is set",
    "not_exists": "is not set",
    "between": "is between",
}
FIELD_LABELS = {
    "subject_or_text": "Subject or text",
    "customer.<attribute>": "Customer attribute",
    "time": "Time of day",
    "business_hours": "Business hours",
    "hours_since_activity": "Hours since last activity",
}
# The fields whose value is neither one of a few (_choices) nor words and text.
VALUE_KINDS = {
    "customer.<attribute>": "attribute",
    "time": "times",
    "hours_since_activity": "number",
}
ACTION_LABELS = {
    "assign": "Assign to",
    "unassign": "Unassign",
    "team": "Move to team",
    "priority": "Set the priority",
    "add_tags": "Add tags",
    "remove_tags": "Remove tags",
    "reply": "Reply with a canned response",
    "note": "Add a note",
    "status": "Set the status",
    "snooze": "Snooze for hours",
    "notify": "Notify",
}


def _choices() -> dict[str, list]:
    """What the editors offer as menus, by the name conditions give it. Read for each page, so
    that a new inbox, team, agent or canned response is there at once."""
    # Two agents can share a name, and two teams' canned responses a shortcut: each label
    # says which one it is.
    agents = sorted(
        (
            (user.pk, user.name if user.name == user.email else f"{user.name} ({user.email})")
            for user in User.objects.filter(is_active=True).only("email", "display_name")
        ),
        key=lambda pair: pair[1].casefold(),
    )
    days = zip(rules.WEEKDAYS, rules.WEEKDAY_NAMES, strict=True)
    choices = {
        "channel": Channel.choices,
        "inbox": Inbox.objects.order_by("name").values_list("pk", "name"),
        "weekday": [(day, name.title()) for day, name in days],
        "business_hours": [("open", "Open"), ("closed", "Closed")],
        "status": Conversation.Status.choices,
        "priority": [(name, name.capitalize()) for name in rules.PRIORITIES],  # what they take
        "team": Team.objects.order_by("name").values_list("pk", "name"),
        "assignee": agents,
        "canned": [
            (c.pk, f"/{c.shortcut} – {c.title} ({c.team.name if c.team else 'everyone'})")
            for c in CannedResponse.objects.select_related("team").order_by("shortcut", "team")
        ],
    }
    return {name: [[code, str(label)] for code, label in pairs] for name, pairs in choices.items()}


def conditions_schema() -> dict:
    """Every field a condition can test, with its operators and its value's choices or kind."""
    choices, fields = _choices(), []
    for name, ops in rules.FIELDS.items():
        field = {
            "name": name.removesuffix("<attribute>"),  # customer. takes the attribute's name
            "label": FIELD_LABELS.get(name, name.capitalize()),
            "ops": ops,
        }
        if name in choices:
            field["choices"] = choices[name]
        else:
            field["kind"] = VALUE_KINDS.get(name, "text")
        fields.append(field)
    return {"rows": "conditions", "fields": fields, "operators": OPERATORS}


def actions_schema() -> dict:
    """Every action, with what each takes (automations.PARSERS's keys)."""
    choices = _choices()
    statuses = [pair for pair in choices["status"] if pair[0] in automations.STATUSES]
    takes = {
        "agent": {"label": "Agent", "choices": choices["assignee"]},
        "team": {"label": "Team", "choices": choices["team"]},
        "priority": {"label": "Priority", "choices": choices["priority"]},
        "tags": {"label": "Tags", "many": True},
        "canned": {"label": "Canned response", "choices": choices["canned"]},
        "status": {"label": "Status", "choices": statuses},
        "hours": {"label": "Hours", "kind": "number"},
        "text": {"label": "Text", "kind": "longtext"},
        "to": {
            "label": "Who",
            "choices": [["assignee", "The assignee"], ["team_leads", "The team's leads"]]
            + choices["assignee"],
        },
    }
    actions = []
    for kind, (keys, _parse) in automations.PARSERS.items():
        params = [{"key": key, **takes[key]} for key in keys]
        if kind == "notify":  # its text is optional: the notification says what happened
            params[1] = {**params[1], "label": "Text (optional)", "optional": True}
        actions.append({"name": kind, "label": ACTION_LABELS[kind], "params": params})
    return {"rows": "actions", "actions": actions}


class RowsWidget(forms.Textarea):
    """A JSON list of conditions or actions, which static/rule_rows.js shows as rows of menus
    and writes back as the admin edits. Without the script, or for a list the rows cannot
    show as it is, the JSON stays there to edit by hand."""

    schema = staticmethod(conditions_schema)

    class Media:
        js = ["rule_rows.js"]
        css = {"all": ["rule_rows.css"]}

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        context["widget"]["attrs"]["data-rows"] = json.dumps(self.schema())
        return context


class ActionsWidget(RowsWidget):
    schema = staticmethod(actions_schema)


def _rows_field(help_text: str, widget: type[RowsWidget]) -> RowsField:
    return RowsField(
        required=False,
        help_text=escape(help_text),  # admin shows help texts as HTML
        widget=widget(attrs={"rows": 8, "cols": 100, "spellcheck": "false"}),
    )


class RoutingRuleForm(forms.ModelForm):
    conditions = _rows_field(rules.HELP, RowsWidget)

    class Meta:
        model = RoutingRule
        fields = [
            "name",
            "position",
            "inbox",
            "is_active",
            "conditions",
            "team",
            "priority",
            "tags",
            "assignee",
            "stop",
        ]

    def clean_conditions(self):
        return self.cleaned_data["conditions"] or []


# The fields of conditions that hold an id, and what it names (for actions: automations.REFERS).
NAMED = {"inbox": "inbox", "team": "team", "assignee": "agent"}
_page = threading.local()


def _named(kind: str, pk) -> str:
    """What an id in a rule's, automation's or macro's JSON names, for the list pages: read
    once per page (NamesOnPage), whatever the number of rows."""
    names = getattr(_page, "names", None)
    if names is None:
        names = {("inbox", i.pk): i.name for i in Inbox.objects.only("name")}
        names |= {("team", t.pk): t.name for t in Team.objects.only("name")}
        names |= {("agent", u.pk): u.name for u in User.objects.only("email", "display_name")}
        names |= {
            ("canned response", c.pk): f"/{c.shortcut}"
            for c in CannedResponse.objects.only("shortcut")
        }
        _page.names = names
    if isinstance(pk, bool) or not isinstance(pk, int):
        return json.dumps(pk, ensure_ascii=False)
    return names.get((kind, pk), f"{kind} {pk} (not found)")


class NamesOnPage(admin.ModelAdmin):
    """A list page that shows names for the ids in its rows' JSON (see _named)."""

    def changelist_view(self, request, extra_context=None):
        _page.names = None  # read afresh for this page (it renders after this returns)
        return super().changelist_view(request, extra_context)


@admin.register(RoutingRule)
class RoutingRuleAdmin(NamesOnPage):
    form = RoutingRuleForm
    list_display = ["position", "name", "where", "when", "then", "stop", "is_active"]
    list_display_links = ["name"]
    list_editable = ["position", "is_active"]
    list_filter = ["is_active", "inbox", "team"]
    list_select_related = ["inbox", "team", "assignee"]
    search_fields = ["name"]
    autocomplete_fields = ["team", "assignee"]
    fieldsets = [
        (None, {"fields": ["name", "position", "inbox", "is_active"]}),
        ("When", {"fields": ["conditions"]}),
        ("Then", {"fields": ["team", "priority", "tags", "assignee", "stop"]}),
    ]

    @admin.display(description="inbox", ordering="inbox__name")
    def where(self, rule):
        return rule.inbox or "all inboxes"

    @admin.display(description="when")
    def when(self, rule):
        if not rule.conditions:
            return "always"
        return " and ".join(_condition_text(condition) for condition in rule.conditions)

    @admin.display(description="then")
    def then(self, rule):
        actions = []
        if rule.team:
            actions.append(f"team {rule.team}")
        if rule.priority is not None:
            actions.append(f"priority {rule.get_priority_display().lower()}")
        if rule.tags:
            actions.append(f"tags {rule.tags}")
        if rule.assignee:
            # Deactivated since: routing passes them over, which nothing else would show.
            passed_over = "" if rule.assignee.is_active else " (inactive: passed over)"
            actions.append(f"assign {rule.assignee}{passed_over}")
        return ", ".join(actions)


def _condition_text(condition) -> str:
    if not isinstance(condition, dict):
        return "?"
    field, value = condition.get("field"), condition.get("value")
    if field in NAMED and value is not None:  # an id, or a list of them: what it names
        ids = value if isinstance(value, list) else [value]
        named = [_named(NAMED[field], pk) for pk in ids]
        shown = " " + (", ".join(named) if isinstance(value, list) else named[0])
    else:
        shown = "" if value is None else " " + json.dumps(value, ensure_ascii=False)
    return f"{field} {str(condition.get('op', '')).replace('_', ' ')}{shown}"


# --- Automations and macros ------------------------------------------------------------------


class AutomationForm(forms.ModelForm):
    conditions = _rows_field(rules.HELP, RowsWidget)
    actions = _rows_field(automations.HELP, ActionsWidget)

    class Meta:
        model = Automation
        fields = [
            "name",
            "position",
            "is_active",
            "event",
            "idle_status",
            "idle_hours",
            "conditions",
            "actions",
        ]

    def clean_conditions(self):
        return self.cleaned_data["conditions"] or []

    def clean_actions(self):
        return self.cleaned_data["actions"] or []


class MacroForm(forms.ModelForm):
    actions = _rows_field(automations.HELP, ActionsWidget)

    class Meta:
        model = Macro
        fields = ["name", "team", "is_active", "actions"]

    def clean_actions(self):
        return self.cleaned_data["actions"] or []


class ActionsAdmin(NamesOnPage):
    """What automations and macros share: the actions shown in the list, and the ids their
    JSON refers to listed beside the form."""

    readonly_fields = ["ids"]

    @admin.display(description="then")
    def then(self, obj):
        try:
            actions = automations.actions_compile(obj.actions)
        except ValidationError:
            return "(invalid: open it to see why)"
        return ", ".join(action.said(_named) for action in actions)

    @admin.display(description="ids to use")
    def ids(self, obj):
        # Four queries whatever the number of rows: the test of every admin page counts them.
        agents = User.objects.filter(is_active=True).order_by("display_name", "email")
        groups = [
            ("Agents", [(agent.pk, agent.name) for agent in agents]),
            ("Teams", [(team.pk, team.name) for team in Team.objects.all()]),
            (
                "Canned responses",
                [
                    (canned.pk, f"/{canned.shortcut} ({canned.team or 'everyone'})")
                    for canned in CannedResponse.objects.select_related("team")
                ],
            ),
        ]
        return format_html_join(
            "",
            "<p><strong>{}</strong>: {}</p>",
            (
                (title, ", ".join(f"{pk} = {name}" for pk, name in items) or "none yet")
                for title, items in groups
            ),
        )


@admin.register(Automation)
class AutomationAdmin(ActionsAdmin):
    form = AutomationForm
    list_display = ["event", "position", "name", "when", "then", "is_active"]
    list_display_links = ["name"]
    list_editable = ["position", "is_active"]
    list_filter = ["is_active", "event"]
    search_fields = ["name"]
    fieldsets = [
        (None, {"fields": ["name", "position", "is_active"]}),
        ("When", {"fields": ["event", "idle_status", "idle_hours", "conditions"]}),
        ("Then", {"fields": ["actions", "ids"]}),
    ]

    @admin.display(description="when")
    def when(self, automation):
        event = automation.get_event_display()
        if automation.event == Automation.Event.IDLE:
            event = f"{automation.get_idle_status_display()} for {automation.idle_hours} h"
        if not automation.conditions:
            return event
        conditions = " and ".join(_condition_text(c) for c in automation.conditions)
        return f"{event}, if {conditions}"


@admin.register(Macro)
class MacroAdmin(ActionsAdmin):
    form = MacroForm
    list_display = ["name", "team", "then", "is_active"]
    list_filter = ["is_active", "team"]
    list_select_related = ["team"]
    search_fields = ["name"]
    autocomplete_fields = ["team"]
    fields = ["name", "team", "is_active", "actions", "ids"]


# --- Business hours --------------------------------------------------------------------------


class IntervalFormSet(BaseInlineFormSet):
    """Overlaps are checked across the whole formset, not in the model's clean(): the rows are
    edited together, and each row checked against the database would see its siblings' old
    times (moving 09–12 to 09–10 and 13–18 to 10–18 in one save would be refused)."""

    def clean(self):
        super().clean()
        intervals = sorted(
            (
                BusinessInterval(
                    weekday=form.cleaned_data["weekday"],
                    opens=form.cleaned_data["opens"],
                    closes=form.cleaned_data["closes"],
                )
                for form in self.forms
                if form.cleaned_data
                and not self._should_delete_form(form)
                and {"weekday", "opens", "closes"} <= form.cleaned_data.keys()
            ),
            key=lambda interval: (interval.weekday, interval.span),
        )
        # Sorted by opening, any overlap shows up between neighbours.
        overlaps = [
            f"{earlier.get_weekday_display()}: {earlier.opens:%H:%M}–{earlier.closes:%H:%M} "
            f"overlaps {later.opens:%H:%M}–{later.closes:%H:%M}."
            for earlier, later in zip(intervals, intervals[1:], strict=False)
            if earlier.weekday == later.weekday and later.span[0] < earlier.span[1]
        ]
        if overlaps:
            raise ValidationError(overlaps)


class BusinessIntervalInline(admin.TabularInline):
    model = BusinessInterval
    formset = IntervalFormSet
    extra = 1


class HolidayInline(admin.TabularInline):
    model = Holiday
    extra = 1


@admin.register(BusinessHours)
class BusinessHoursAdmin(ClocksFollow, KeptWhileUsed, admin.ModelAdmin):
    list_display = ["name", "timezone", "state", "updated_at"]
    search_fields = ["name", "timezone"]
    readonly_fields = ["state", "created_at", "updated_at"]
    inlines = [BusinessIntervalInline, HolidayInline]

    def clocks_moved_by(self, schedule, form):
        if not schedule.pk:
            return None  # nobody keeps these hours yet
        # Counted on this schedule: schedule_for's choice (the inbox's, else its team's).
        return SlaClock.objects.filter(business_hours_only=True).filter(
            Q(conversation__inbox__business_hours=schedule)
            | Q(conversation__inbox__business_hours=None)
            & (
                Q(conversation__team__business_hours=schedule)
                | Q(
                    conversation__team=None,
                    conversation__inbox__default_team__business_hours=schedule,
                )
            )
        )

    def in_use(self, schedule):
        # Without them an inbox or a team is open around the clock: no out-of-office reply,
        # and SLA clocks that never pause.
        users = [f"Inbox “{i.name}”" for i in Inbox.objects.filter(business_hours=schedule)]
        users += [f"Team “{t.name}”" for t in Team.objects.filter(business_hours=schedule)]
        return [f"{user} keeps these hours: give it others first" for user in users]

    def get_queryset(self, request):
        # `state` reads every interval and closed day: load them with the page, not per row.
        return super().get_queryset(request).prefetch_related("intervals", "holidays")

    @admin.display(description="now")
    def state(self, schedule):
        zone = zone_named(schedule.timezone)
        if zone is None or not schedule.pk:  # not saved, or a zone being corrected on this page
            return "-"
        now = timezone.now()
        if hours.is_open(schedule, now):
            return "open now"
        opening = hours.next_opening(schedule, now)
        if opening is None:
            return "closed, no opening within a year"
        local = opening.astimezone(zone)
        when = dateformat.format(
            local, "D H:i" if opening - now < timedelta(days=6) else "D j M H:i"
        )
        return f"closed, opens {when} {schedule.timezone}"


@admin.register(SlaPolicy)
class SlaPolicyAdmin(ClocksFollow, admin.ModelAdmin):
    list_display = [
        "name",
        "channel",
        "priority",
        "first_response_minutes",
        "next_response_minutes",
        "resolution_minutes",
        "business_hours_only",
        "is_active",
    ]
    list_filter = ["is_active", "channel", "priority"]
    fields = [
        "name",
        ("channel", "priority"),
        ("first_response_minutes", "next_response_minutes", "resolution_minutes"),
        "business_hours_only",
        "warn_minutes",
        "is_active",
    ]

    def clocks_moved_by(self, policy, form):
        # A new policy, or one now for other conversations, may apply to any of them; new
        # targets move only the clocks this policy measures.
        if policy.pk and not {"channel", "priority", "is_active"} & set(form.changed_data):
            return SlaClock.objects.filter(policy=policy)
        return SlaClock.objects.all()

    def delete_model(self, request, policy):
        self.delete_queryset(request, SlaPolicy.objects.filter(pk=policy.pk))

    @transaction.atomic  # the list's "delete selected" runs outside the page's transaction
    def delete_queryset(self, request, queryset):
        # Their clocks go on under the policies that now apply, as after an edit.
        held = sla.sla_clocks_hold(SlaClock.objects.filter(policy__in=queryset))
        super().delete_queryset(request, queryset)
        for clock in held:
            clock.policy = None  # as the deletion left it in the database
        sla.sla_clocks_resume(held)
