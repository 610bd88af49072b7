"""The agent's own account: their profile, and what they hear of by email."""

from django import forms
from django.contrib.auth import forms as auth_forms
from django.db import transaction
from django.template import loader

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


class PasswordResetForm(auth_forms.PasswordResetForm):
    """Django's, with all that depends on the account done by the worker: in the request, an
    address with an account cost a look-up, a token, three templates and a message to the
    broker that one without did not, and the slower answer told them apart. The request
    hands the address on (`save`); the worker finds its accounts and mails them
    (`mails_send`, helpdesk.tasks.password_reset_mail)."""

    # What the view says of the mail, kept for the worker (the request stays behind).
    KEPT = ("subject_template_name", "email_template_name", "html_email_template_name")

    def save(self, **kwargs):
        from helpdesk.tasks import password_reset_mail

        email = self.cleaned_data["email"]
        options = {key: kwargs[key] for key in self.KEPT if kwargs.get(key)}
        options["extra_email_context"] = kwargs.get("extra_email_context") or {}
        transaction.on_commit(lambda: password_reset_mail.delay(email, options), robust=True)

    def mails_send(self, **options):
        """In the worker: Django's save, for the accounts of the address given. The links
        lead to `base` (extra_email_context), so no site or request is needed."""
        super().save(domain_override="Threadline", **options)

    def send_mail(
        self,
        subject_template_name,
        email_template_name,
        context,
        from_email,
        to_email,
        html_email_template_name=None,
    ):
        from helpdesk.tasks import mail_send

        subject = "".join(loader.render_to_string(subject_template_name, context).splitlines())
        body = loader.render_to_string(email_template_name, context)
        html = loader.render_to_string(html_email_template_name, context)
        # Its own task: a mail server down for now is tried again without a new link.
        transaction.on_commit(lambda: mail_send.delay(subject, body, html, [to_email]), robust=True)
