"""Teams and access: the one helper every page, API and websocket goes through."""
from __future__ import annotations

import re
from typing import TypeVar

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, models, transaction
from django.http import Http404
from django.utils.text import slugify

from nexus.models import Membership, Team

M = TypeVar("M", bound=models.Model)


@transaction.atomic
def team_ensure_personal(*, user: AbstractBaseUser) -> Team:
    """Every user has a personal team they own; create it on first need (idempotent)."""
    team = Team.objects.filter(personal_owner=user).first()
    if team is None:
        base = slugify(f"{user.get_username()}-personal")[:180] or f"user-{user.pk}"
        slug = base
        n = 1
        while Team.objects.filter(slug=slug).exists():
            n += 1
            slug = f"{base}-{n}"
        try:
            with transaction.atomic():
                team = Team.objects.create(name=f"{user.get_username()} (personal)", slug=slug, personal_owner=user)
        except IntegrityError:
            team = Team.objects.get(personal_owner=user)
    Membership.objects.get_or_create(team=team, user=user, defaults={"role": Membership.Role.OWNER})
    return team


@transaction.atomic
def user_create(*, username: str, password: str, email: str = "") -> AbstractBaseUser:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username=username, password=password, email=email)
    team_ensure_personal(user=user)
    return user


def team_member_add(*, team: Team, user: AbstractBaseUser, role: str = Membership.Role.MEMBER) -> Membership:
    membership, _ = Membership.objects.update_or_create(team=team, user=user, defaults={"role": role})
    return membership


def user_teams(user: AbstractBaseUser | AnonymousUser) -> models.QuerySet[Team]:
    if not user.is_authenticated:
        return Team.objects.none()
    return Team.objects.filter(memberships__user=user)


def team_choices(user: AbstractBaseUser) -> list[tuple[int, str]]:
    """The user's teams for a form's team field, their personal one first (the default)."""
    teams = sorted(user_teams(user), key=lambda t: (t.personal_owner_id != user.pk, t.name.lower()))
    return [(t.pk, t.name) for t in teams]


def membership_for(user: AbstractBaseUser | AnonymousUser, team_id: int) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, team_id=team_id).first()


def resolve_team(user: AbstractBaseUser, team: str | int | None, *, write: bool) -> Team:
    """The team an API call or form acts in: the user's personal team unless one is named.

    `team` may be an id or a slug. Unknown teams and teams the user is not in are 404.
    """
    if team in (None, ""):
        resolved = team_ensure_personal(user=user)
    else:
        text = str(team)
        if not re.fullmatch(r"[0-9]{1,18}|[-a-zA-Z0-9_]{1,200}", text):
            from nexus.errors import NexusError

            raise NexusError(f"team: must be a team id or slug, got {text[:60]!r}", code="validation_error",
                             details={"team": "not an id or slug"})
        lookup = {"pk": int(text)} if re.fullmatch(r"[0-9]{1,18}", text) else {"slug": text[:200]}
        resolved = user_teams(user).filter(**lookup).first()
        if resolved is None:
            raise Http404("No such team.")
    _check_role(user, resolved.pk, write=write)
    return resolved


def _check_role(user: AbstractBaseUser, team_id: int, *, write: bool) -> Membership:
    membership = membership_for(user, team_id)
    if membership is None:
        raise Http404("Not found.")
    if write and not membership.can_write:
        raise PermissionDenied("Viewers cannot change anything in this team.")
    return membership


def get_for_user(queryset: models.QuerySet[M], user: AbstractBaseUser | AnonymousUser, *, pk: int, write: bool = False) -> M:
    """Load a team-owned object: 404 when it does not exist or the user is not in its team,
    403 when the user may only read and asked to write."""
    if not user.is_authenticated:
        raise Http404("Not found.")
    obj = queryset.filter(pk=pk, team__memberships__user_id=user.pk).first()
    if obj is None:
        raise Http404("Not found.")
    _check_role(user, obj.team_id, write=write)
    return obj


def visible_to(queryset: models.QuerySet[M], user: AbstractBaseUser | AnonymousUser) -> models.QuerySet[M]:
    """Rows of the user's teams: `team_id IN (the user's memberships)`, without joining the team
    table (a join per row that lists paid for and never used)."""
    if not user.is_authenticated:
        return queryset.none()
    return queryset.filter(team_id__in=Membership.objects.filter(user_id=user.pk).values("team_id"))
