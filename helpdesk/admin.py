from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from helpdesk.forms import NotificationKindsField
from helpdesk.models import ApiToken, User
from helpdesk.tokens import api_token_create, api_token_revoke
from routing.models import TeamMembership


def rotation_asked(model_admin, request, queryset, *, intro: str, items) -> TemplateResponse:
    """The page a "rotate the secret" action shows first: `intro`, then each of `items` as
    (name, what stops working until its new secret is pasted there)."""
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Rotate the secret?",
        "intro": intro,
        "items": items,
        "selected": [obj.pk for obj in queryset],
    }
    return TemplateResponse(request, "admin/rotate_secret.html", context)


def secrets_shown(model_admin, request, shown, *, then: str):
    """New secrets, `shown` as (what, secret), on this answer alone: a message would carry
    them in a cookie (Django's message storage) to the next page, and in every copy of it."""
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Copy the new secret now",
        "shown": shown,
        "then": then,
    }
    response = render(request, "admin/secrets_shown.html", context)
    add_never_cache_headers(response)
    return response


class KeptWhileUsed:
    """An admin whose deletes are refused, on the confirmation page itself, while something
    still uses the object (`in_use`: one sentence each, saying what to do first). Deleting it
    would otherwise change live conversations and automations without a word."""

    def in_use(self, obj) -> list[str]:
        return []

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, perms, [*protected, *(r for o in objs for r in self.in_use(o))]


def open_count(conversations, what: str) -> list[str]:
    """ "3 open conversations <what>", for in_use, or nothing."""
    from conversations.models import Conversation

    count = conversations.filter(status__in=Conversation.WORKING).count()
    plural = "s" if count != 1 else ""
    return [f"{count} open conversation{plural} {what}"] if count else []


class MembershipInline(admin.TabularInline):
    model = TeamMembership
    extra = 0
    autocomplete_fields = ["team"]


class EmailInAnyCase:
    """Emails are kept in lower case, and one address is one user whatever its case."""

    def clean_email(self):
        email = self.cleaned_data["email"].strip().lower()
        others = User.objects.filter(email__iexact=email).exclude(pk=self.instance.pk)
        if others.exists():
            raise forms.ValidationError("A user with this email address already exists.")
        return email


class UserCreationForm(EmailInAnyCase, AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email",)


class UserEditForm(EmailInAnyCase, UserChangeForm):
    email_notifications = NotificationKindsField(
        label="Email notifications",
        help_text="Also sent by email when the agent leaves one unread for a couple of minutes.",
    )

    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(KeptWhileUsed, BaseUserAdmin):
    form = UserEditForm
    add_form = UserCreationForm
    ordering = ["email"]
    list_display = ["email", "display_name", "role", "availability", "is_active", "last_login"]
    list_filter = ["role", "availability", "is_active", "teams"]
    search_fields = ["email", "display_name"]
    readonly_fields = ["last_login", "date_joined", "availability_changed_at"]
    inlines = [MembershipInline]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        (
            "Agent profile",
            {
                "fields": [
                    "display_name",
                    "avatar",
                    "role",
                    "availability",
                    "availability_changed_at",
                    "email_notifications",
                ]
            },
        ),
        (
            "Permissions",
            {"fields": ["is_active"]},  # the role says the rest
        ),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [
        (None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]}),
    ]

    def in_use(self, user):
        from conversations.models import Conversation, Message
        from routing.automations import actions_naming, conditions_naming

        keep = (
            "untick Active instead: they can no longer sign in, what they hold goes back to "
            "their teams' queues, and their work keeps its name"
        )
        reasons = open_count(
            Conversation.objects.filter(assignee=user),
            f"assigned to {user}: reassign them, or {keep}",
        )
        if not reasons and Message.objects.filter(author=user).exists():
            reasons.append(f"{user} wrote to customers: {keep}")
        reasons += [f"{using} acts for {user}" for using in actions_naming("agent", user.pk)]
        naming = conditions_naming("agent", user.pk)
        return reasons + [f"{using} looks for {user} in its conditions" for using in naming]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Admins make tokens for any user (shown once, in the message after saving) and revoke
    them; a token cannot be read back nor edited, only revoked."""

    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    list_select_related = ["user"]
    search_fields = ["name", "user__email", "prefix"]
    autocomplete_fields = ["user"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        return ["user", "name"] if obj is None else ["user", "name", *self.readonly_fields]

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is None else ["user", *self.readonly_fields]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        made, request.api_token_made = api_token_create(user=obj.user, name=obj.name)
        obj.pk = made.pk

    def response_add(self, request, obj, post_url_continue=None):
        """The token on this answer alone: a message would carry it in a cookie (Django's
        message storage) to the next page, and in every copy of that cookie."""
        context = {
            **self.admin_site.each_context(request),
            "title": "API token made",
            "api_token": obj,
            "token": request.api_token_made,
        }
        response = render(request, "admin/helpdesk/apitoken/made.html", context)
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        for api_token in queryset.filter(revoked_at=None):
            api_token_revoke(api_token=api_token)
        self.message_user(request, "Revoked: those tokens no longer work.")
