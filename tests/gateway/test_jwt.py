"""JWT attacks against a real gateway: each one a 401 with a reason, never an anonymous fall-back.

Two gateways: the module's HS256 one (issuer/audience unset), and one configured for RS256 with an
issuer and an audience.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.gateway.server import SECRET, start_gateway

pytestmark = pytest.mark.timeout(120)

ISSUER = "https://id.example.com/"
AUDIENCE = "tollgate-test"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": f"jwt-{uuid.uuid4().hex[:8]}", "iat": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def refused(base_url: str, token: str) -> dict[str, Any]:
    reply = httpx.get(f"{base_url}/api/billing/balance", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert reply.status_code == 401, reply.text
    assert reply.headers["www-authenticate"].startswith("Bearer")
    error: dict[str, Any] = reply.json()["error"]
    assert error["message"]
    return error


def accepted(base_url: str, token: str) -> None:
    reply = httpx.get(f"{base_url}/api/billing/balance", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert reply.status_code == 200, reply.text


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rs_gateway(gateway_db: str, tmp_path_factory: pytest.TempPathFactory, rsa_key: rsa.RSAPrivateKey) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("rs-gateway")
    public = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = Path(directory) / "public.pem"
    key_file.write_bytes(public)
    server = start_gateway(
        gateway_db,
        Path(directory) / "data",
        TOLLGATE_JWT_SECRET="",
        TOLLGATE_JWT_PUBLIC_KEY_FILE=str(key_file),
        TOLLGATE_JWT_ALGORITHMS="RS256",
        TOLLGATE_JWT_ISSUER=ISSUER,
        TOLLGATE_JWT_AUDIENCE=AUDIENCE,
    )
    try:
        yield server
    finally:
        server.stop()


def test_a_valid_token_is_accepted(gateway: Any) -> None:
    accepted(gateway.base_url, jwt.encode(claims(), SECRET, algorithm="HS256"))


def test_alg_none_is_refused(gateway: Any) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    token = f"{header}.{b64(json.dumps(claims()).encode())}."
    assert refused(gateway.base_url, token)["code"] == "algorithm_not_allowed"


def test_expired_and_not_yet_valid(gateway: Any) -> None:
    now = int(time.time())
    expired = jwt.encode(claims(exp=now - 120, iat=now - 600), SECRET, algorithm="HS256")
    assert refused(gateway.base_url, expired)["code"] == "token_expired"
    future = jwt.encode(claims(nbf=now + 600), SECRET, algorithm="HS256")
    assert refused(gateway.base_url, future)["code"] == "token_not_yet_valid"


def test_missing_sub_or_exp(gateway: Any) -> None:
    assert refused(gateway.base_url, jwt.encode(claims(sub=None), SECRET, algorithm="HS256"))["code"] == "missing_claim"
    assert refused(gateway.base_url, jwt.encode(claims(exp=None), SECRET, algorithm="HS256"))["code"] == "missing_claim"
    assert refused(gateway.base_url, jwt.encode(claims(sub=""), SECRET, algorithm="HS256"))["code"] in (
        "invalid_subject",
        "invalid_token",
    )


def test_tampered_payload_and_wrong_secret(gateway: Any) -> None:
    token = jwt.encode(claims(sub="alice"), SECRET, algorithm="HS256")
    header, _, signature = token.split(".")
    forged = f"{header}.{b64(json.dumps(claims(sub='mallory')).encode())}.{signature}"
    assert refused(gateway.base_url, forged)["code"] == "invalid_signature"
    other = jwt.encode(claims(), "another-secret-" + "y" * 40, algorithm="HS256")
    assert refused(gateway.base_url, other)["code"] == "invalid_signature"


def test_other_algorithms_are_refused_on_an_hs256_gateway(gateway: Any, rsa_key: rsa.RSAPrivateKey) -> None:
    assert (
        refused(gateway.base_url, jwt.encode(claims(), rsa_key, algorithm="RS256"))["code"] == "algorithm_not_allowed"
    )
    assert refused(gateway.base_url, jwt.encode(claims(), SECRET, algorithm="HS512"))["code"] == "algorithm_not_allowed"
    es_key = ec.generate_private_key(ec.SECP256R1())
    assert refused(gateway.base_url, jwt.encode(claims(), es_key, algorithm="ES256"))["code"] == "algorithm_not_allowed"


def test_garbage_tokens(gateway: Any) -> None:
    for token in ("a.b.c", "x" * 5000, "....", "eyJhbGciOiJIUzI1NiJ9.%%%.x"):
        refused(gateway.base_url, token)
    reply = httpx.get(f"{gateway.base_url}/api/billing/balance", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "unsupported_authorization"


def test_rs256_gateway_accepts_its_issuer_and_audience(rs_gateway: Any, rsa_key: rsa.RSAPrivateKey) -> None:
    good = jwt.encode(claims(iss=ISSUER, aud=AUDIENCE), rsa_key, algorithm="RS256")
    accepted(rs_gateway.base_url, good)


def test_hs_rs_confusion_is_refused(rs_gateway: Any, rsa_key: rsa.RSAPrivateKey) -> None:
    """An HS256 token whose HMAC key is the gateway's public key (the classic confusion attack)."""
    public = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims(iss=ISSUER, aud=AUDIENCE)).encode())
    import hashlib
    import hmac

    signature = b64(hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    assert refused(rs_gateway.base_url, f"{header}.{payload}.{signature}")["code"] == "algorithm_not_allowed"


def test_wrong_issuer_or_audience(rs_gateway: Any, rsa_key: rsa.RSAPrivateKey) -> None:
    wrong_iss = jwt.encode(claims(iss="https://evil.example.com/", aud=AUDIENCE), rsa_key, algorithm="RS256")
    assert refused(rs_gateway.base_url, wrong_iss)["code"] == "invalid_issuer"
    wrong_aud = jwt.encode(claims(iss=ISSUER, aud="someone-else"), rsa_key, algorithm="RS256")
    assert refused(rs_gateway.base_url, wrong_aud)["code"] == "invalid_audience"
    no_aud = jwt.encode(claims(iss=ISSUER), rsa_key, algorithm="RS256")
    assert refused(rs_gateway.base_url, no_aud)["code"] == "missing_claim"
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims(iss=ISSUER, aud=AUDIENCE), other_key, algorithm="RS256")
    assert refused(rs_gateway.base_url, forged)["code"] == "invalid_signature"


# --- identity quirks ---------------------------------------------------------------------------------


def test_an_expiry_centuries_away_is_refused(gateway: Any) -> None:
    """exp = 1e20 was accepted: a token that never expires. Lifetimes are capped (24 h by default)."""
    token = jwt.encode(claims(exp=1e20), SECRET, algorithm="HS256")
    assert refused(gateway.base_url, token)["code"] == "token_lifetime_too_long"


def test_an_expiry_past_the_lifetime_cap_is_refused(gateway: Any) -> None:
    now = int(time.time())
    assert refused(gateway.base_url, jwt.encode(claims(exp=now + 25 * 3600), SECRET, algorithm="HS256"))[
        "code"
    ] == "token_lifetime_too_long"
    accepted(gateway.base_url, jwt.encode(claims(exp=now + 23 * 3600), SECRET, algorithm="HS256"))


@pytest.mark.parametrize("exp", ["2000000000", "soon", True, [1], {"at": 1}])
def test_an_expiry_that_is_not_a_number_is_refused(gateway: Any, exp: Any) -> None:
    """A numeric string was accepted (PyJWT reads int("2000000000")): exp must be a JSON number.
    (PyJWT itself reads true as 1, long expired.)"""
    token = jwt.encode(claims(exp=exp), SECRET, algorithm="HS256")
    assert refused(gateway.base_url, token)["code"] in ("invalid_expiry", "malformed_token", "token_expired")


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_issued_at_and_not_before_must_be_numbers(gateway: Any, claim: str) -> None:
    token = jwt.encode(claims(**{claim: str(int(time.time()) - 10)}), SECRET, algorithm="HS256")
    assert refused(gateway.base_url, token)["code"] in ("invalid_claim", "invalid_token")


@pytest.mark.parametrize(
    ("claim", "value", "code"),
    [
        ("sub", "alice\x00", "invalid_subject"),
        ("sub", "\x00", "invalid_subject"),
        ("sub", "bob\x07", "invalid_subject"),
        ("sub", "\ud800", "invalid_subject"),
        ("email", "a@example.com\x00", "invalid_claim"),
        ("name", "Ada\x00Lovelace", "invalid_claim"),
        ("email", "x" * 321, "invalid_claim"),
        ("name", "n" * 201, "invalid_claim"),
        ("email", 42, "invalid_claim"),
    ],
)
def test_identity_claims_with_control_characters_are_refused_not_500(
    gateway: Any, claim: str, value: Any, code: str
) -> None:
    """U+0000 in sub/email/name was a 500 (PostgreSQL text cannot hold NUL); over-long claims were cut."""
    token = jwt.encode(claims(**{claim: value}), SECRET, algorithm="HS256")
    error = refused(gateway.base_url, token)
    assert error["code"] == code
    assert claim in error["message"]


def test_identity_claims_are_kept_as_given(gateway: Any, gdb: Any) -> None:
    """sub is the identity, used verbatim; email and name are informational and stored as sent."""
    subject = f"  spaced-{uuid.uuid4().hex[:6]} "
    token = jwt.encode(claims(sub=subject, email="ada@example.com", name="Ada Lovelace"), SECRET, algorithm="HS256")
    accepted(gateway.base_url, token)
    row = gdb.execute("SELECT email, name FROM billing.users WHERE external_id = %s", (subject,)).fetchone()
    assert row == ("ada@example.com", "Ada Lovelace")


def test_null_email_and_name_count_as_absent(gateway: Any) -> None:
    accepted(gateway.base_url, jwt.encode(claims(email=None, name=None) | {"email": None}, SECRET, algorithm="HS256"))
