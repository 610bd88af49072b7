"""The agent's own account: their profile, and what they hear of by email."""

from django import forms

from helpdesk.models import User


def notification_kinds():
    from conversations.models import Notification  # it depends on this app, not the reverse

    return Notification.Kind.choices


class NotificationKindsField(forms.MultipleChoiceField):
    """Notification kinds as checkboxes, kept in the order of their choices."""

    widget = forms.CheckboxSelectMultiple

    def __init__(self, **kwargs):
        super().__init__(choices=notification_kinds, required=False, **kwargs)

    def clean(self, value):
        chosen = set(super().clean(value))
        return [kind for kind, _ in self.choices if kind in chosen]


class ProfileForm(forms.ModelForm):
    """Display name and the notification kinds that also come by email."""

    email_notifications = NotificationKindsField(
        label="Also by email", help_text="Sent when you leave one unread for a couple of minutes."
    )

    class Meta:
        model = User
        fields = ["display_name", "email_notifications"]
        help_texts = {"display_name": "What customers and teammates see. Empty: your email's name."}
