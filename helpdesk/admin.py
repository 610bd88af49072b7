from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm

from helpdesk.models import User
from routing.models import TeamMembership


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
    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    form = UserEditForm
    add_form = UserCreationForm
    ordering = ["email"]
    list_display = ["email", "display_name", "role", "availability", "is_active", "last_login"]
    list_filter = ["role", "availability", "is_active", "is_staff", "teams"]
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
                ]
            },
        ),
        (
            "Permissions",
            {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]},
        ),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [
        (None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]}),
    ]
