"""Who is calling: JWT users, API-key clients and anonymous callers (a Starlette AuthenticationBackend).

* ``Authorization: Bearer <JWT>`` -> a billed user. The algorithms are pinned by configuration (never
  taken from the token's header), ``exp`` and ``sub`` are required, ``iss``/``aud`` are checked when
  configured, with a small leeway. ``exp``/``iat``/``nbf`` must be numbers and ``exp`` at most
  ``TOLLGATE_JWT_MAX_LIFETIME_SECONDS`` ahead. ``sub`` is the identity, used verbatim; it maps to a
  ``billing.users`` row created on first sight. ``email`` and ``name`` are informational, stored as
  sent. Nothing is normalised: a claim with control characters, or too long, is refused (401).
* ``Authorization: Bearer tg_...`` or ``X-API-Key: tg_...`` -> a known client (``client_key`` = the
  key's name), tracked, not charged; or, when the key is bound to a user, charged to that user.
  Keys are stored as SHA-256 digests; the row is found by digest and the digest compared with
  ``hmac.compare_digest``.
* nothing -> anonymous: tracked with user NULL, unless anonymous callers are switched off.
* ``Authorization: Bearer <metrics token>`` on ``/metrics`` only, when ``[abuse.metrics] token`` is set -> the
  metrics scraper (``METRICS_SCRAPER``), which may read /metrics and nothing else. Anywhere else the same
  header is an ordinary (refused) bearer token.

Credentials that are present but wrong are a 401 with the reason, never a fall-back to anonymous.
Identities are ``GatewayUser`` objects, subclasses of the MCP SDK's ``AuthenticatedUser``: the SDK's
transports bind each MCP session to the principal that opened it and refuse the session to anyone
else, which is how "identity fixed per session" is enforced.
"""

from __future__ import annotations

import hmac
import math
import os
import secrets
import time
import unicodedata
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from psycopg_pool import AsyncConnectionPool
from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, BaseUser
from starlette.requests import HTTPConnection

from api.gateway.apikeys import API_KEY_PREFIX, hash_key
from api.gateway.config import GatewaySettings
from api.ledger import aio as aledger

DEV_SECRET_FILE = "jwt_secret"  # noqa: S105 - a file name, not a secret


class InvalidCredentials(AuthenticationError):
    """Credentials were presented and refused. ``code`` is stable for clients; the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Identity:
    """The caller of one request or MCP session."""

    kind: str  # "user" (JWT), "api_key", "anonymous", or "metrics" (the metrics token, on /metrics only)
    subject: str | None = None  # JWT sub
    issuer: str | None = None
    email: str | None = None
    name: str | None = None
    client_key: str | None = None  # API key name
    key_user_id: uuid.UUID | None = None  # the user an API key is bound to
    admin: bool = False

    @property
    def label(self) -> str:
        if self.kind == "user":
            return f"user:{self.subject}"
        if self.kind == "api_key":
            return f"key:{self.client_key}"
        if self.kind == "metrics":
            return "metrics"
        return "anonymous"


ANONYMOUS = Identity(kind="anonymous")
METRICS_SCRAPER = Identity(kind="metrics")
METRICS_PATH = "/metrics"


def is_metrics_token(credentials: str, token: str | None) -> bool:
    """Whether ``credentials`` (what follows ``Bearer``) is the configured metrics token, in constant time."""
    return token is not None and hmac.compare_digest(credentials.encode(), token.encode())


class GatewayUser(AuthenticatedUser):
    """A JWT user or an API-key client; its AccessToken names the principal for MCP session binding."""

    def __init__(self, identity: Identity, token: str, scopes: list[str], expires_at: int | None) -> None:
        claims: dict[str, Any] = {"iss": identity.issuer} if identity.issuer else {}
        super().__init__(
            AccessToken(
                token=token,
                client_id=identity.label,
                scopes=scopes,
                expires_at=expires_at,
                subject=identity.subject,
                claims=claims,
            )
        )
        self.caller = identity

    @property
    def display_name(self) -> str:
        return self.caller.email or self.caller.label


class MetricsScraper(BaseUser):
    """Whoever presented the metrics token on /metrics."""

    caller = METRICS_SCRAPER

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return "metrics"


class AnonymousUser(BaseUser):
    caller = ANONYMOUS

    @property
    def is_authenticated(self) -> bool:
        return False

    @property
    def display_name(self) -> str:
        return "anonymous"


def identity_of(conn: HTTPConnection) -> Identity:
    user = conn.scope.get("user")
    caller = getattr(user, "caller", None)
    return caller if isinstance(caller, Identity) else ANONYMOUS


def load_jwt_key(settings: GatewaySettings, data_dir: Path) -> str:
    """The key that verifies (and, for HS*, signs) tokens.

    With neither TOLLGATE_JWT_SECRET nor TOLLGATE_JWT_PUBLIC_KEY_FILE, a random development secret is
    generated once into ``data_dir/jwt_secret`` (mode 0600) so that ``tollgate token`` can mint
    tokens that the local gateway accepts. Configure a real secret or key in production.
    """
    if settings.jwt_public_key_file is not None:
        return settings.jwt_public_key_file.read_text()
    if settings.jwt_secret is not None:
        return settings.jwt_secret
    path = data_dir / DEV_SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def mint_token(
    key: str,
    subject: str,
    *,
    algorithm: str = "HS256",
    email: str | None = None,
    name: str | None = None,
    admin_scope: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    lifetime_seconds: int = 86400,
) -> str:
    """A signed JWT for development and tests (``tollgate token``)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "nbf": now, "exp": now + lifetime_seconds}
    if email:
        claims["email"] = email
    if name:
        claims["name"] = name
    if admin_scope:
        claims["scope"] = admin_scope
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, key, algorithm=algorithm)


def _scopes(claims: dict[str, Any]) -> list[str]:
    scopes: list[str] = []
    raw = claims.get("scope")
    if isinstance(raw, str):
        scopes.extend(raw.split())
    for name in ("scopes", "scp"):
        value = claims.get(name)
        if isinstance(value, list):
            scopes.extend(item for item in value if isinstance(item, str))
        elif isinstance(value, str):
            scopes.extend(value.split())
    return scopes


def _has_forbidden_characters(value: str) -> bool:
    """Control characters (U+0000 among them, which PostgreSQL text cannot hold) or lone surrogates."""
    return any(unicodedata.category(char) in ("Cc", "Cs") for char in value)


def _claim_text(claims: dict[str, Any], name: str, limit: int) -> str | None:
    """An informational claim (email, name) exactly as sent: absent, null or "" is None; anything that is
    not a string of at most `limit` characters without control characters is refused, never trimmed."""
    value = claims.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit or _has_forbidden_characters(value):
        raise InvalidCredentials(
            "invalid_claim",
            f"the token's {name} claim must be a string of at most {limit} characters without control characters",
        )
    return value


def _numeric_claim(claims: dict[str, Any], name: str) -> None:
    """exp, iat and nbf are JSON numbers (RFC 7519 NumericDate); PyJWT would also take a digit string."""
    value = claims.get(name)
    if name in claims and (isinstance(value, bool) or not isinstance(value, int | float) or value != value):
        code = "invalid_expiry" if name == "exp" else "invalid_claim"
        raise InvalidCredentials(code, f"the token's {name} claim must be a number of seconds (NumericDate)")


_JWT_REASONS: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "token_expired", "the token has expired"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid", "the token is not valid yet (nbf/iat in the future)"),
    (jwt.InvalidAudienceError, "invalid_audience", "the token is not issued for this gateway (aud)"),
    (jwt.InvalidIssuerError, "invalid_issuer", "the token was issued by an untrusted issuer (iss)"),
    (jwt.MissingRequiredClaimError, "missing_claim", "the token lacks a required claim"),
    (jwt.InvalidAlgorithmError, "algorithm_not_allowed", "the token's algorithm is not accepted here"),
    (jwt.InvalidSignatureError, "invalid_signature", "the token's signature does not verify"),
    (jwt.DecodeError, "malformed_token", "the token is not a well-formed JWT"),
)


class JWTVerifier:
    """Verifies bearer JWTs against the configured key, algorithms, issuer and audience."""

    def __init__(self, settings: GatewaySettings, key: str) -> None:
        self._settings = settings
        self._key = key
        self._algorithms = list(settings.jwt_algorithms)
        self._leeway = settings.jwt_leeway_seconds
        required = ["exp", "sub"]
        if settings.jwt_issuer:
            required.append("iss")
        if settings.jwt_audience:
            required.append("aud")
        self._options: jwt.types.Options = {"require": required, "verify_aud": settings.jwt_audience is not None}

    def verify(self, token: str) -> tuple[Identity, list[str], int]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidCredentials("malformed_token", "the token is not a well-formed JWT") from None
        if header.get("alg") not in self._algorithms:
            raise InvalidCredentials(
                "algorithm_not_allowed",
                f"the token's algorithm {header.get('alg')!r} is not accepted here (allowed: {self._algorithms})",
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                issuer=self._settings.jwt_issuer,
                audience=self._settings.jwt_audience,
                leeway=self._settings.jwt_leeway_seconds,
                options=self._options,
            )
        except jwt.PyJWTError as exc:
            for error_type, code, message in _JWT_REASONS:
                if isinstance(exc, error_type):
                    raise InvalidCredentials(code, f"{message}: {exc}") from None
            raise InvalidCredentials("invalid_token", f"the token was refused: {exc}") from None
        for name in ("exp", "iat", "nbf"):
            _numeric_claim(claims, name)
        exp = claims["exp"]
        if not math.isfinite(exp) or exp > time.time() + self._settings.jwt_max_lifetime_seconds + self._leeway:
            raise InvalidCredentials(
                "token_lifetime_too_long",
                f"the token expires more than {self._settings.jwt_max_lifetime_seconds} seconds from now; "
                "this gateway accepts shorter-lived tokens (TOLLGATE_JWT_MAX_LIFETIME_SECONDS)",
            )
        subject = claims.get("sub")
        if (
            not isinstance(subject, str)
            or not subject.strip()
            or len(subject) > 255
            or _has_forbidden_characters(subject)
        ):
            raise InvalidCredentials(
                "invalid_subject",
                "the token's sub must be a non-blank string of at most 255 characters without control characters",
            )
        scopes = _scopes(claims)
        identity = Identity(
            kind="user",
            subject=subject,
            issuer=claims.get("iss") if isinstance(claims.get("iss"), str) else None,
            email=_claim_text(claims, "email", 320),
            name=_claim_text(claims, "name", 200),
            admin=self._settings.admin_scope in scopes,
        )
        return identity, scopes, int(exp)


class Accounts:
    """JWT subjects -> billing user ids, created race-free on first sight (billing.ensure_account).

    Cached in the process: users are never deleted, so a subject's id never changes; the cache key
    includes email and name so that a change of either reaches the database once.
    """

    def __init__(self, pool: AsyncConnectionPool[Any], capacity: int = 100_000) -> None:
        self._pool = pool
        self._capacity = capacity
        self._cache: OrderedDict[tuple[str, str | None, str | None], uuid.UUID] = OrderedDict()

    async def user_id(self, identity: Identity) -> uuid.UUID | None:
        """The billed user of a caller: the JWT user, an API key's bound user, or None."""
        if identity.kind == "api_key":
            return identity.key_user_id
        if identity.kind != "user" or identity.subject is None:
            return None
        key = (identity.subject, identity.email, identity.name)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        async with self._pool.connection() as conn:
            user_id = await aledger.ensure_account(conn, identity.subject, identity.email, identity.name)
        self._cache[key] = user_id
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return user_id


class GatewayAuthBackend(AuthenticationBackend):
    def __init__(
        self,
        settings: GatewaySettings,
        verifier: JWTVerifier,
        pool: AsyncConnectionPool[Any],
        *,
        metrics_token: str | None = None,
    ) -> None:
        self._settings = settings
        self._verifier = verifier
        self._pool = pool
        self._metrics_token = metrics_token

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        authorization = conn.headers.get("authorization")
        api_key = conn.headers.get("x-api-key")
        if authorization is not None and api_key is not None:
            raise InvalidCredentials("ambiguous_credentials", "send either Authorization or X-API-Key, not both")
        if authorization is not None:
            scheme, _, credentials = authorization.partition(" ")
            credentials = credentials.strip()
            if scheme.lower() != "bearer" or not credentials:
                raise InvalidCredentials(
                    "unsupported_authorization", "the Authorization header must be 'Bearer <token or API key>'"
                )
            if conn.scope["path"] == METRICS_PATH and is_metrics_token(credentials, self._metrics_token):
                return AuthCredentials(["metrics"]), MetricsScraper()
            if credentials.startswith(API_KEY_PREFIX):
                return await self._api_key(credentials)
            identity, scopes, exp = self._verifier.verify(credentials)
            return AuthCredentials(["authenticated", "user", *(["admin"] if identity.admin else [])]), GatewayUser(
                identity, credentials, scopes, exp
            )
        if api_key is not None:
            return await self._api_key(api_key.strip())
        return AuthCredentials([]), AnonymousUser()

    async def _api_key(self, key: str) -> tuple[AuthCredentials, BaseUser]:
        if not key.startswith(API_KEY_PREFIX) or len(key) > 200:
            raise InvalidCredentials("invalid_api_key", "the API key is not a Tollgate key (tg_...)")
        digest = hash_key(key)
        async with self._pool.connection() as conn:
            found = await aledger.authenticate_api_key(conn, digest)
        if found is None or not hmac.compare_digest(bytes(found.key_hash), digest):
            raise InvalidCredentials("invalid_api_key", "the API key is not known")
        if found.revoked:
            raise InvalidCredentials("revoked_api_key", f"the API key {found.name!r} has been revoked")
        identity = Identity(kind="api_key", client_key=found.name, key_user_id=found.user_id)
        return AuthCredentials(["authenticated", "api_key"]), GatewayUser(identity, "", [], None)
