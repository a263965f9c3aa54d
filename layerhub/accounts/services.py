"""Teams, members, tokens and the audit log: the writes, each recorded in the audit log."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from layerhub.accounts.models import AuditEntry, Membership, Role, Team, Token, token_hash

ROBOT_PREFIX = "robot$"


def audit(
    *, actor: Any, action: str, team: Team | None = None, target: str = "", **detail: Any
) -> AuditEntry:
    """Record that ``actor`` did ``action`` (``image.pull``, ``token.create``...) to
    ``target``; ``detail`` holds JSON-ready facts (never a password or a token)."""
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return AuditEntry.objects.create(
        actor=user,
        actor_name=user.get_username() if user is not None else "system",
        team=team,
        action=action,
        target=target[:512],
        detail=detail,
    )


def team_create(*, name: str, actor: Any, quota_bytes: int | None = None) -> Team:
    """A new team, owned by ``actor`` (when it is a user)."""
    team = Team(name=name, quota_bytes=quota_bytes)
    team.full_clean()
    with transaction.atomic():
        team.save()
        if actor is not None and getattr(actor, "is_authenticated", False):
            Membership.objects.create(team=team, user=actor, role=Role.OWNER)
        audit(actor=actor, action="team.create", team=team, target=team.name)
    return team


def team_quota_set(*, team: Team, quota_bytes: int | None, actor: Any) -> Team:
    """Limit the logical bytes of ``team``'s images to ``quota_bytes`` (None: no limit).
    Images the team has already are kept when the new limit is below them: only the next
    pull, import or commit is refused."""
    if quota_bytes is not None and not 0 <= quota_bytes < 1 << 63:
        raise ValidationError("a quota is a number of bytes from 0 to 2^63 - 1")
    with transaction.atomic():
        before = Team.objects.select_for_update().get(pk=team.pk).quota_bytes
        team.quota_bytes = quota_bytes
        team.save(update_fields=["quota_bytes"])
        if before != quota_bytes:
            audit(
                actor=actor,
                action="team.quota",
                team=team,
                target=team.name,
                before=before,
                quota_bytes=quota_bytes,
            )
    return team


def member_set(*, team: Team, user: Any, role: str, actor: Any) -> Membership:
    """Add ``user`` to ``team`` with ``role``, or change their role."""
    role = Role(role)
    with transaction.atomic():
        membership, created = Membership.objects.get_or_create(
            team=team, user=user, defaults={"role": role}
        )
        before = membership.role
        if not created and before != role:
            if before == Role.OWNER and role != Role.OWNER:
                _keep_an_owner(team, leaving=membership)
            membership.role = role
            membership.save(update_fields=["role"])
        if created:
            audit(
                actor=actor,
                action="member.add",
                team=team,
                target=user.get_username(),
                role=role.value,
            )
        elif before != role:
            audit(
                actor=actor,
                action="member.role",
                team=team,
                target=user.get_username(),
                before=before,
                role=role.value,
            )
    return membership


def member_remove(*, membership: Membership, actor: Any) -> None:
    """Take a user out of a team (never its last owner)."""
    with transaction.atomic():
        if membership.role == Role.OWNER:
            _keep_an_owner(membership.team, leaving=membership)
        membership.delete()
        audit(
            actor=actor,
            action="member.remove",
            team=membership.team,
            target=membership.user.get_username(),
        )


def _keep_an_owner(team: Team, *, leaving: Membership) -> None:
    others = Membership.objects.filter(team=team, role=Role.OWNER).exclude(pk=leaving.pk)
    if not others.select_for_update().exists():
        raise ValidationError(f"team {team.name} must keep an owner")


def token_create(
    *,
    name: str,
    actor: Any,
    scope: str = Token.Scope.READ,
    team: Team | None = None,
) -> tuple[Token, str]:
    """A personal token of ``actor`` (no team) or a robot token of ``team``; returns the
    token and its secret, which is shown once and never stored.

    A robot acts through a user of its own (``robot$<team>+<name>``, no password, member of
    the team alone), so its jobs and audit entries name it.
    """
    scope = Token.Scope(scope)
    name = name.strip()
    if not name or len(name) > 100:
        raise ValidationError("a token needs a name of 1 to 100 characters")
    secret = Token.new_secret()
    with transaction.atomic():
        if team is None:
            token = Token.objects.create(
                kind=Token.Kind.PERSONAL,
                name=name,
                user=actor,
                scope=scope,
                key_hash=token_hash(secret),
                key_prefix=secret[:10],
                created_by=actor,
            )
        else:
            robot_name = f"{ROBOT_PREFIX}{team.name}+{name}"[:150]
            users = get_user_model()
            if users.objects.filter(username=robot_name).exists():
                raise ValidationError(f"team {team.name} already has a robot named {name}")
            robot = users.objects.create_user(username=robot_name)
            robot.set_unusable_password()
            robot.save()
            role = Role.VIEWER if scope == Token.Scope.READ else Role.DEVELOPER
            Membership.objects.create(team=team, user=robot, role=role)
            token = Token.objects.create(
                kind=Token.Kind.ROBOT,
                name=name,
                user=robot,
                team=team,
                scope=scope,
                key_hash=token_hash(secret),
                key_prefix=secret[:10],
                created_by=actor,
            )
        audit(
            actor=actor,
            action="token.create",
            team=team,
            target=f"{token.kind} token {name}",
            scope=scope.value,
        )
    return token, secret


def token_revoke(*, token: Token, actor: Any) -> None:
    """Revoke ``token`` at once: its next request is refused. A robot's user goes with it."""
    with transaction.atomic():
        updated = Token.objects.filter(pk=token.pk, revoked_at=None).update(
            revoked_at=timezone.now()
        )
        if not updated:
            return
        if token.kind == Token.Kind.ROBOT:
            Membership.objects.filter(user_id=token.user_id).delete()
            get_user_model().objects.filter(pk=token.user_id).update(is_active=False)
        audit(
            actor=actor,
            action="token.revoke",
            team=token.team,
            target=f"{token.kind} token {token.name}",
        )


def token_authenticate(secret: str) -> Token | None:
    """The live token whose secret is ``secret``, its last use stamped; None otherwise."""
    if not secret or len(secret) > 200:
        return None
    token = (
        Token.objects.select_related("user", "team")
        .filter(key_hash=token_hash(secret), revoked_at=None, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    # one write a minute at most: a busy robot does not rewrite its row on every call
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        Token.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
