"""API token authentication in one plain query: the token's user is read with a SQL statement
built once, without the ORM's per-request query compilation (the list endpoints' largest fixed cost
after the database). Same rules as DRF's TokenAuthentication: an unknown key or an inactive user
is a 401."""
from __future__ import annotations

import functools

from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token


@functools.lru_cache(maxsize=1)
def _user_by_key_sql() -> tuple[str, list[str]]:
    user = get_user_model()
    columns = [f.column for f in user._meta.concrete_fields]
    q = connection.ops.quote_name
    sql = (f"SELECT {', '.join('u.' + q(c) for c in columns)} FROM {q(Token._meta.db_table)} t "
           f"JOIN {q(user._meta.db_table)} u ON u.{q(user._meta.pk.column)} = t.{q(Token._meta.get_field('user').column)} "
           f"WHERE t.{q(Token._meta.pk.column)} = %s")
    return sql, [f.attname for f in user._meta.concrete_fields]


class FastTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str):
        sql, names = _user_by_key_sql()
        with connection.cursor() as cursor:
            cursor.execute(sql, [key])
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        user = get_user_model().from_db(connection.alias, names, row)
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return user, Token(key=key, user=user)
