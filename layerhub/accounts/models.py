"""Teams own catalog repositories; members hold roles; tokens let automation act for a user
or a team; the audit log records who did what."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone


class Role(models.TextChoices):
    """A member's role in a team, weakest first (``rank`` orders them)."""

    VIEWER = "viewer", "viewer"
    DEVELOPER = "developer", "developer"
    MAINTAINER = "maintainer", "maintainer"
    OWNER = "owner", "owner"

    @property
    def rank(self) -> int:
        return ROLE_ORDER.index(self)


ROLE_ORDER = [Role.VIEWER, Role.DEVELOPER, Role.MAINTAINER, Role.OWNER]

team_name_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9._-]{0,62}$",
    "a team name is 1-63 lowercase letters, digits, '.', '_' or '-', "
    "starting with a letter or digit",
)


class Team(models.Model):
    """A group of people that owns catalog repositories, registry logins and robot tokens."""

    name = models.CharField(max_length=63, unique=True, validators=[team_name_validator])
    # the most logical bytes (every image of the team as if stored alone) its images may
    # take; None: no limit
    quota_bytes = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role in a team."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="unique_membership")]
        ordering = ["team", "user"]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} as {self.role}"


TOKEN_PREFIX = "lh_"


def token_hash(secret: str) -> str:
    """What is stored of a token: its SHA-256 (tokens are long random strings, so a plain
    hash is enough; a slow hash would only slow every API call)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Token(models.Model):
    """An API token: personal (acts as its user) or a team's robot (acts as the team's robot
    user, with the team alone). Shown once at creation; only its hash is kept."""

    class Kind(models.TextChoices):
        PERSONAL = "personal", "personal"
        ROBOT = "robot", "robot"

    class Scope(models.TextChoices):
        READ = "read", "read"
        READ_WRITE = "read-write", "read-write"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    name = models.CharField(max_length=100)
    # the user the token acts as: the owner of a personal token, a robot's own user
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.CASCADE, related_name="robot_tokens"
    )
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.READ)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    # the first characters, to tell tokens apart in lists
    key_prefix = models.CharField(max_length=16, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} token {self.name} ({self.key_prefix}...)"

    @staticmethod
    def new_secret() -> str:
        """A fresh token string: ``lh_`` and 40 random URL-safe characters."""
        return TOKEN_PREFIX + secrets.token_urlsafe(30)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class AuditEntry(models.Model):
    """One thing someone did: kept for good, never edited from the site."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # the actor's name as it was, kept when the user is deleted
    actor_name = models.CharField(max_length=150, blank=True)
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_entries"
    )
    action = models.CharField(max_length=64)  # "image.pull", "token.create", ...
    target = models.CharField(max_length=512, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name} {self.action} {self.target}"
