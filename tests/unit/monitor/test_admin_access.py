"""Who may read the admin port's views (the sidecar's `/`, `/status`, `/metrics`).

With neither a token nor an allow-list the operator chose the reach by where the port is bound,
so anyone who reaches it reads them; an allow-list alone restricts them to loopback and its
networks, as on the application's own port; a token admits whoever sends it.
"""

from __future__ import annotations

import pytest

from modeltap import ModelTapConfig
from modeltap.monitor.admin import admin_views
from modeltap.snapshot import Snapshot
from tests.support.asgi_driver import make_http_scope, run_asgi

LOOPBACK = ("127.0.0.1", 5000)
ALLOWED = ("10.8.1.2", 5000)
ELSEWHERE = ("192.168.7.9", 5000)
TOKEN = "s3cret-admin-token"


def _snapshot() -> Snapshot:
    return Snapshot(taken_unix_ns=2, start_unix_ns=1, instance_id="i", pid=1)


def _status(config: ModelTapConfig, client: tuple[str, int], token: str | None = None) -> int | None:
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    scope = make_http_scope("GET", "/status", headers=headers, client=client)
    return run_asgi(admin_views(_snapshot, config), scope).status


@pytest.mark.parametrize(
    ("settings", "client", "token", "expected"),
    [
        # Neither: the port's binding decides (the container image binds 0.0.0.0).
        ({}, ELSEWHERE, None, 200),
        ({}, ALLOWED, None, 200),
        ({}, LOOPBACK, None, 200),
        # An allow-list alone: loopback and its networks, nobody else.
        ({"views_allow": ("10.8.0.0/16",)}, ALLOWED, None, 200),
        ({"views_allow": ("10.8.0.0/16",)}, LOOPBACK, None, 200),
        ({"views_allow": ("10.8.0.0/16",)}, ELSEWHERE, None, 403),
        # A token alone: loopback, or the token.
        ({"views_token": TOKEN}, ELSEWHERE, None, 403),
        ({"views_token": TOKEN}, ELSEWHERE, TOKEN, 200),
        ({"views_token": TOKEN}, ELSEWHERE, "wrong", 403),
        ({"views_token": TOKEN}, LOOPBACK, None, 200),
        # Both: the networks need no token, the others do.
        ({"views_token": TOKEN, "views_allow": ("10.8.0.0/16",)}, ALLOWED, None, 200),
        ({"views_token": TOKEN, "views_allow": ("10.8.0.0/16",)}, ELSEWHERE, None, 403),
        ({"views_token": TOKEN, "views_allow": ("10.8.0.0/16",)}, ELSEWHERE, TOKEN, 200),
    ],
)
def test_who_reads_the_admin_views(
    settings: dict[str, object], client: tuple[str, int], token: str | None, expected: int
) -> None:
    config = ModelTapConfig.from_env({}, **settings)

    assert _status(config, client, token) == expected


def test_an_allow_list_grants_reading_only() -> None:
    """The write endpoints answer loopback clients or the token, never an allow-listed network."""
    config = ModelTapConfig.from_env({}, views_allow=("10.8.0.0/16",))
    scope = make_http_scope("POST", "/rollback", client=ALLOWED)

    assert run_asgi(admin_views(_snapshot, config), scope).status == 403
