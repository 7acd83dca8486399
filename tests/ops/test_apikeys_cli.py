"""API keys: the helpers of api/gateway/apikeys.py, and `tollgate apikey create/list/revoke` through the real command
against a real database (output, exit codes, one-line errors; a key is printed once and never again)."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from typing import Any

import psycopg
import pytest

from api.gateway import apikeys
from api.ledger import sync as ledger
from api.ops import cli
from tests import helpers as h


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, db_url: str) -> str:
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", db_url)
    return db_url


KEY = re.compile(r"^tg_[A-Za-z0-9_-]{43}$")


# --- api/gateway/apikeys.py --------------------------------------------------------------------------------


def test_generated_keys_are_random_tg_keys() -> None:
    keys = {apikeys.generate_key() for _ in range(200)}
    assert len(keys) == 200
    assert all(KEY.match(key) for key in keys)
    assert apikeys.API_KEY_PREFIX == "tg_"


def test_hash_prefix_and_comparison() -> None:
    key = apikeys.generate_key()
    digest = apikeys.hash_key(key)
    assert digest == hashlib.sha256(key.encode()).digest() and len(digest) == 32
    assert apikeys.key_prefix(key) == key[:10] and apikeys.key_prefix(key).startswith("tg_")
    assert apikeys.digest_matches(digest, key)
    assert not apikeys.digest_matches(digest, key + "x")
    assert hmac.compare_digest(digest, apikeys.hash_key(key))


# --- tollgate apikey ------------------------------------------------------------------------------


def _created_key(out: str) -> str:
    [key] = [line for line in out.splitlines() if line.startswith("tg_")]
    assert KEY.match(key)
    return key


def test_create_prints_the_key_once_and_stores_only_its_hash(
    env: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["apikey", "create", "research-bot"]) == 0
    captured = capsys.readouterr()
    key = _created_key(captured.out)
    assert captured.out.splitlines()[0] == "api key research-bot created (tracked, not charged)"
    assert "cannot be shown again" in captured.err
    found = ledger.authenticate_api_key(db, apikeys.hash_key(key))
    assert found is not None and (found.name, found.user_id, found.revoked) == ("research-bot", None, False)
    stored = db.execute("SELECT key_prefix, key_hash FROM billing.api_keys").fetchall()
    assert stored == [(key[:10], apikeys.hash_key(key))]
    assert key.encode() not in stored[0][1]


def test_create_for_a_user_by_external_subject_or_id(
    env: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # an unknown subject is created (ensure_account); a known one is found
    assert cli.main(["apikey", "create", "ada-laptop", "--user", "ada@example.com"]) == 0
    key = _created_key(capsys.readouterr().out)
    ada = ledger.ensure_account(db, "ada@example.com")
    found = ledger.authenticate_api_key(db, apikeys.hash_key(key))
    assert found is not None and found.user_id == ada
    assert cli.main(["apikey", "create", "ada-ci", "--user", str(ada)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"api key ada-ci created (bills user {ada})"
    again = ledger.authenticate_api_key(db, apikeys.hash_key(_created_key(out)))
    assert again is not None and again.user_id == ada
    assert h.counts(db)["users"] == 1


def test_list_shows_names_and_prefixes_never_keys(
    env: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["apikey", "create", "one"]) == 0
    first = _created_key(capsys.readouterr().out)
    assert cli.main(["apikey", "create", "two", "--user", "bob"]) == 0
    second = _created_key(capsys.readouterr().out)
    assert cli.main(["apikey", "revoke", "one"]) == 0
    capsys.readouterr()

    assert cli.main(["apikey", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["name", "prefix", "user_id", "created_at", "revoked_at"]
    assert [line.split()[0] for line in lines[1:]] == ["one", "two"]
    assert f"{first[:10]}…" in lines[1] and f"{second[:10]}…" in lines[2]
    assert lines[1].split()[-1] != "-" and lines[2].split()[-1] == "-"
    for key in (first, second):
        assert key not in out
        assert apikeys.hash_key(key).hex() not in out
        assert key[10:20] not in out


def test_revoke_is_idempotent_and_an_unknown_name_is_a_one_line_error(
    env: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["apikey", "create", "bot"]) == 0
    key = _created_key(capsys.readouterr().out)
    assert cli.main(["apikey", "revoke", "bot"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("api key bot revoked at ")
    assert cli.main(["apikey", "revoke", "bot"]) == 0
    again = capsys.readouterr().out
    assert again.startswith("api key bot was already revoked at ")
    assert first.split(" at ")[1] == again.split(" at ")[1]
    found = ledger.authenticate_api_key(db, apikeys.hash_key(key))
    assert found is not None and found.revoked

    assert cli.main(["apikey", "revoke", "ghost"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err == "tollgate: error: Unknown API key: no API key named 'ghost'.\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["apikey", "create", "bad name"], "name may only contain letters, digits"),
        (["apikey", "create", "taken"], "an API key named 'taken' already exists"),
        (["apikey", "create", "taken", "--user", "newcomer"], "already exists"),  # the user is not created either
        (["apikey", "create", "new", "--user", str(uuid.UUID(int=7))], "Unknown user"),
    ],
)
def test_create_errors_are_one_line(
    env: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    ledger.create_api_key(db, "taken", apikeys.hash_key("tg_x"), "tg_x")
    with h.nothing_written(db):
        assert cli.main(argv) == cli.EXIT_ERROR
    captured = capsys.readouterr()
    assert captured.err.startswith("tollgate: error: ") and message in captured.err
    assert captured.err.count("\n") == 1
    assert "tg_" not in captured.out  # no key is shown for a key that was not created


def test_apikey_needs_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["apikey"])
    assert exit_info.value.code == 2
    assert "apikey" in capsys.readouterr().err
