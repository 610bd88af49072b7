from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create(self, email, password, **fields):
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **fields)
        user.set_password(password)
        user.full_clean(exclude=["password"])
        user.save(using=self._db)
        return user

    def create_user(self, email, password=None, **fields):
        fields.setdefault("is_staff", False)
        fields.setdefault("is_superuser", False)
        return self._create(email, password, **fields)

    def create_superuser(self, email, password=None, **fields):
        fields.update(is_staff=True, is_superuser=True, role=User.Role.ADMIN)
        return self._create(email, password, **fields)

    def get_by_natural_key(self, username):
        return self.get(email__iexact=username)


# What an agent hears of by email too, unless they choose otherwise on their profile page: what
# asks them to act (Notification.Kind values; conversations depends on this app, not the other
# way round, so they are spelt here).
EMAIL_NOTIFICATIONS_DEFAULT = ("assigned", "mentioned", "failed", "sla_breached")


def email_notifications_default() -> list[str]:
    return list(EMAIL_NOTIFICATIONS_DEFAULT)


def validate_notification_kinds(value) -> None:
    """A list of Notification.Kind values, each once."""
    from conversations.models import Notification

    kinds = set(Notification.Kind.values)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError(_("A list of notification kinds is expected."))
    unknown = [v for v in value if v not in kinds]
    if unknown:
        raise ValidationError(
            _("Unknown notification kinds: %(kinds)s."), params={"kinds": ", ".join(unknown)}
        )
    if len(set(value)) != len(value):
        raise ValidationError(_("Each notification kind may be named once."))


class User(AbstractBaseUser, PermissionsMixin):
    """A person who works in Threadline: an agent, or an admin who also configures it.

    Customers are not users; they are `conversations.Customer`.
    """

    class Role(models.TextChoices):
        AGENT = "agent", _("Agent")
        ADMIN = "admin", _("Admin")

    class Availability(models.TextChoices):
        ONLINE = "online", _("Online")
        AWAY = "away", _("Away")
        OFFLINE = "offline", _("Offline")

    email = models.EmailField(_("email"), unique=True)
    display_name = models.CharField(_("display name"), max_length=120, blank=True)
    avatar = models.ImageField(_("avatar"), upload_to="avatars/", blank=True)
    role = models.CharField(
        max_length=10,
        choices=Role.choices,
        default=Role.AGENT,
        help_text=_(
            "Agents answer their teams' conversations. Admins see every conversation and "
            "configure Threadline here, in the admin."
        ),
    )
    availability = models.CharField(
        max_length=10, choices=Availability.choices, default=Availability.OFFLINE
    )
    availability_changed_at = models.DateTimeField(null=True, blank=True)
    # Refreshed while the agent has the inbox open: "online" without a recent sign of life is
    # not shown to customers as someone being there.
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # Notification kinds also sent by email when left unread (conversations.notification_mail).
    email_notifications = models.JSONField(
        _("email notifications"),
        default=email_notifications_default,
        blank=True,
        validators=[validate_notification_kinds],
        help_text=_(
            "What this agent also hears of by email when they leave it unread in the inbox "
            "for a couple of minutes."
        ),
    )
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(
        _("staff status"), default=False, help_text=_("Can log into the Django admin.")
    )
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        ordering = ["email"]
        constraints = [
            # Sign-in finds the user by email whatever its case: two spellings would be two
            # users that sign-in cannot tell apart.
            models.UniqueConstraint(
                Lower("email"),
                name="user_email_unique_any_case",
                violation_error_message=_("A user with this email address already exists."),
            ),
        ]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        self.email = self.email.strip().lower()
        # One switch: an admin sees every conversation and configures Threadline in the
        # Django admin; an agent does neither.
        self.is_staff = self.is_superuser = self.role == self.Role.ADMIN
        super().save(*args, **kwargs)

    @property
    def name(self) -> str:
        return self.name_of(self.display_name, self.email)

    @staticmethod
    def name_of(display_name: str, email: str) -> str:
        """What an agent is called, from those two columns (where no User is at hand)."""
        return display_name or email.split("@")[0]

    @property
    def is_admin(self) -> bool:
        """Admins see every conversation; agents only those of their teams."""
        return self.is_superuser or self.role == self.Role.ADMIN

    def get_full_name(self):
        return self.name

    def get_short_name(self):
        return self.name


class ApiToken(models.Model):
    """A personal token for the REST API (`Authorization: Bearer <token>`). Only a hash is
    kept: the token is shown once, when it is made, and cannot be read back from here."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(
        _("name"), max_length=100, help_text=_("What uses it, e.g. “CRM sync”.")
    )
    # The first characters, for telling tokens apart in lists; too few to guess the rest.
    prefix = models.CharField(max_length=12, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("API token")

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"
