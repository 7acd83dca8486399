"""Who the client is at the edge: the address every per-IP control keys on.

The TCP peer, unless the peer is a configured trusted proxy (``abuse.trusted_proxies``): then
``X-Forwarded-For`` is read from the right, skipping trusted proxies, and the first address that is not one
is the client (RFC 7239 §5.2's reasoning: only the hops we trust appended what we read; everything left of
the first untrusted hop may be forged by the client). Malformed entries stop the walk at the last address
we could trust. With no trusted proxies the header is ignored entirely: a client cannot choose its own
address by sending it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from starlette.types import Scope

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The scope key under which the resolved address is kept for the rest of the request.
SCOPE_KEY = "tollgate.client_ip"
# A header longer than this is not read past its last 64 hops (each at most 45 characters).
MAX_HOPS = 64


class TrustedProxies:
    """The configured proxy networks, and the client address of a request behind them."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(net, strict=False) for net in networks)

    def trusts(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def client_ip(self, scope: Scope) -> IPAddress | None:
        """The client's address (cached in the scope); None when the server gave no peer (a test client)."""
        cached = scope.get(SCOPE_KEY)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        peer = _parse(scope["client"][0]) if scope.get("client") else None
        address = peer
        if peer is not None and self.networks and self.trusts(peer):
            address = self._walk(peer, _forwarded_for(scope))
        scope[SCOPE_KEY] = address
        return address

    def _walk(self, peer: IPAddress, hops: list[str]) -> IPAddress:
        address = peer
        for raw in reversed(hops[-MAX_HOPS:]):
            hop = _parse(raw)
            if hop is None:
                return address  # a malformed hop: nothing left of it can be trusted
            address = hop
            if not self.trusts(hop):
                return hop
        return address


def _forwarded_for(scope: Scope) -> list[str]:
    values = [value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"x-forwarded-for"]
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@lru_cache(maxsize=4096)
def _parse(raw: str) -> IPAddress | None:
    text = raw.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
