"""The client address every per-IP control keys on: the peer, or X-Forwarded-For only past trusted proxies."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from api.abuse.clientip import SCOPE_KEY, TrustedProxies


def scope(peer: str | None, *forwarded: str) -> dict[str, Any]:
    return {
        "type": "http",
        "client": (peer, 5555) if peer else None,
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
    }


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


def test_without_trusted_proxies_the_header_is_ignored():
    proxies = TrustedProxies([])
    assert proxies.client_ip(scope("203.0.113.9", "198.51.100.1")) == ip("203.0.113.9")


def test_a_forged_header_from_an_untrusted_peer_changes_nothing():
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client_ip(scope("203.0.113.9", "198.51.100.1")) == ip("203.0.113.9")


def test_behind_a_trusted_proxy_the_client_is_the_last_untrusted_hop():
    proxies = TrustedProxies(["10.0.0.0/8"])
    # The client forged the first entry; the proxy appended what it saw.
    assert proxies.client_ip(scope("10.0.0.2", "1.2.3.4, 198.51.100.7")) == ip("198.51.100.7")
    # Two trusted proxies in a row, across two headers.
    assert proxies.client_ip(scope("10.0.0.2", "1.2.3.4, 198.51.100.7", "10.1.1.1")) == ip("198.51.100.7")


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        ("garbage, 10.0.0.5", "10.0.0.5"),  # a malformed hop stops the walk at the last trusted address
        ("", "10.0.0.2"),  # no header: the proxy itself
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("198.51.100.7:8080", "198.51.100.7"),
        ("::ffff:198.51.100.8", "198.51.100.8"),
    ],
)
def test_hops_are_parsed_strictly(forwarded, expected):
    proxies = TrustedProxies(["10.0.0.0/8"])
    headers = (forwarded,) if forwarded else ()
    assert proxies.client_ip(scope("10.0.0.2", *headers)) == ip(expected)


def test_only_the_last_hops_of_a_huge_header_are_read():
    proxies = TrustedProxies(["10.0.0.0/8"])
    header = ", ".join(["10.9.9.9"] * 10_000)
    assert proxies.client_ip(scope("10.0.0.2", "198.51.100.7, " + header)) == ip("10.9.9.9")


def test_the_answer_is_kept_for_the_rest_of_the_request():
    proxies = TrustedProxies([])
    request = scope("203.0.113.9")
    assert proxies.client_ip(request) == ip("203.0.113.9")
    assert request[SCOPE_KEY] == ip("203.0.113.9")
    assert TrustedProxies([]).client_ip(scope(None)) is None
