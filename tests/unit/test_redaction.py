"""What may leave the process: secret-looking query values and headers are redacted, URLs in logs
and reports keep only their scheme, host and port, and settings that may hold a secret are
never repeated in errors."""

from __future__ import annotations

import logging

import pytest

from modeltap.alerts.webhook import WebhookSender
from modeltap.redaction import is_credential_header, may_hold_a_secret, redact_query, redact_url


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("sig=abc&x=1", "sig=REDACTED&x=1"),
        ("model=a&api-key=S1&x-api-key=S2", "model=a&api-key=REDACTED&x-api-key=REDACTED"),
        ("client_secret=S3&secret=S4", "client_secret=REDACTED&secret=REDACTED"),
        ("refresh_token=S5&id_token=S6&auth=S7", "refresh_token=REDACTED&id_token=REDACTED&auth=REDACTED"),
        ("Password=S8&passwd=S9&sessionid=S10", "Password=REDACTED&passwd=REDACTED&sessionid=REDACTED"),
        ("a=1;token=S11", "a=1;token=REDACTED"),  # servers that split on ';' would read a token
        ("filter=a;b&x=%20y", "filter=a;b&x=%20y"),  # shown as sent
        ("max_tokens=256&tokenizer=bpe&author=ann", "max_tokens=256&tokenizer=bpe&author=ann"),
        ("authorization=Bearer%20S14&%74oken=S15", "authorization=REDACTED&%74oken=REDACTED"),
        ("accessToken=S12&x.sig=S13", "accessToken=REDACTED&x.sig=REDACTED"),
        ("X-Amz-Credential=AKIA&rows=8", "X-Amz-Credential=REDACTED&rows=8"),
        ("model=churn&version=2&rows=8", "model=churn&version=2&rows=8"),
    ],
)
def test_secret_looking_query_values_are_redacted(query: str, shown: str) -> None:
    assert redact_query(query) == shown
    secrets = ("abc", "AKIA", *(f"S{n}" for n in range(1, 16)))
    for secret in secrets:
        if f"={secret}" in query:
            assert f"={secret}" not in redact_query(query)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("Authorization", True),
        ("x-api-key", True),
        ("X-Session-Token", True),
        ("x-client-secret", True),
        ("x-auth-request-user", True),
        ("x-session-id", True),
        ("x-authorization", True),
        ("x-authentication", True),
        ("x-session", True),
        ("session_key", True),
        ("secretKey", True),
        ("authKey", True),
        ("passwordHash", True),
        ("password2", True),
        ("tokenid", True),
        ("secrets", True),
        ("oauth_verifier", True),
        ("apikey", True),
        ("access_token", True),
        ("X-Amz-Security-Token", True),
        ("id_token", True),
        ("client_secret", True),
        ("user-agent", False),
        ("content-type", False),
        ("x-tenant", False),
        ("x-ratelimit-remaining-tokens", False),
        ("x-author", False),
    ],
)
def test_credential_headers(name: str, secret: bool) -> None:
    assert is_credential_header(name) is secret


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T000/B000/XXXX", "https://hooks.slack.com/…"),
        ("http://alertmanager:9093", "http://alertmanager:9093"),
        ("http://user:pw@hooks.example:8080/", "http://hooks.example:8080"),
        ("http://hooks.example/?token=XXXX", "http://hooks.example/…"),
    ],
)
def test_urls_keep_scheme_host_and_port(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_failing_webhook_is_logged_without_its_path_or_query(
    caplog: pytest.LogCaptureFixture, unused_tcp_port: int
) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}/services/T0001/B0002/XXXXSECRETXXXX?token=abc"
    sender = WebhookSender((url,), timeout_s=1.0, backoff_s=0.01)
    with caplog.at_level(logging.DEBUG, logger="modeltap"):
        sender.offer({})
        sender.close(10.0)
    assert (sender.sent, sender.failed) == (0, 1)
    assert caplog.records, "the failure is logged"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"127.0.0.1:{unused_tcp_port}" in logged
    assert "XXXXSECRETXXXX" not in logged
    assert "token=abc" not in logged


@pytest.mark.parametrize(
    ("setting", "secret"),
    [
        ("OTEL_EXPORTER_OTLP_HEADERS", True),
        ("MODELTAP_ALERT_SLACK_WEBHOOK", True),
        ("alert_webhooks", True),
        ("alertmanagers", True),
        ("views_token", True),
        ("MODELTAP_UPSTREAM", False),
        ("max_features", False),
    ],
)
def test_settings_that_may_hold_a_secret(setting: str, secret: bool) -> None:
    assert may_hold_a_secret(setting) is secret
