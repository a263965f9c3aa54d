"""Routes of the teams pages. A team is named in the URL by its name; names start with a
letter or digit, so ``-/`` never shadows one."""

from __future__ import annotations

from django.urls import URLPattern, path

from layerhub.accounts.views import logins, teams, tokens

app_name = "teams"

urlpatterns: list[URLPattern] = [
    path("", teams.team_list, name="list"),
    path("-/create/", teams.team_create_view, name="create"),
    path("<str:name>/", teams.team_detail, name="detail"),
    path("<str:name>/quota/", teams.team_quota, name="quota"),
    path("<str:name>/members/", teams.member_add, name="member_add"),
    path("<str:name>/members/<int:pk>/role/", teams.member_role, name="member_role"),
    path("<str:name>/members/<int:pk>/remove/", teams.member_remove_view, name="member_remove"),
    path("<str:name>/tokens/", tokens.robot_tokens, name="tokens"),
    path("<str:name>/tokens/<int:pk>/revoke/", tokens.robot_token_revoke, name="token_revoke"),
    path("<str:name>/logins/", logins.team_logins, name="logins"),
    path("<str:name>/logins/<int:pk>/delete/", logins.team_login_delete, name="login_delete"),
]
