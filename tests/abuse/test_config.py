"""The [abuse] configuration: one place (tollgate.toml + TOLLGATE_ABUSE_*), on by default, wrong values named."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from api.abuse.config import AbuseConfigError, AbuseSettings, load_abuse_settings
from api.gateway.config import load_settings


def test_every_control_is_on_by_default():
    settings = load_abuse_settings(None, {})
    assert settings == AbuseSettings()
    assert settings.enabled
    assert settings.rate_limits.tool_calls_per_ip != "off"
    assert settings.payments.intents_per_hour_per_user > 0
    assert settings.connections.header_timeout_seconds > 0


def test_a_knob_is_read_from_the_file_and_the_environment_wins():
    table = {"trusted_proxies": ["10.0.0.0/8"], "payments": {"cooling_off_spendable_usd": "7.50"}}
    settings = load_abuse_settings(table, {})
    assert settings.trusted_proxies == ("10.0.0.0/8",)
    assert settings.payments.cooling_off_spendable_usd == Decimal("7.50")

    env = {
        "TOLLGATE_ABUSE_PAYMENTS_COOLING_OFF_SPENDABLE_USD": "2",
        "TOLLGATE_ABUSE_TRUSTED_PROXIES": "127.0.0.1, ::1",
        "TOLLGATE_ABUSE_ENABLED": "false",
    }
    settings = load_abuse_settings(table, env)
    assert settings.payments.cooling_off_spendable_usd == Decimal(2)
    assert settings.trusted_proxies == ("127.0.0.1", "::1")
    assert not settings.enabled


@pytest.mark.parametrize(
    ("table", "env", "named"),
    [
        ({"bogus": 1}, {}, "'bogus'"),
        ({"payments": {"bogus": 1}}, {}, "[abuse.payments]: unknown key 'bogus'"),
        ({"payments": {"cooling_off_spendable_usd": 5.0}}, {}, "never TOML floats"),
        ({"payments": {"intents_per_hour_per_user": "ten"}}, {}, "must be an integer"),
        ({"payments": 3}, {}, "must be a table"),
        ({"enabled": "yes"}, {}, "must be true or false"),
        ({}, {"TOLLGATE_ABUSE_ENABLED": "maybe"}, "TOLLGATE_ABUSE_ENABLED"),
        ({}, {"TOLLGATE_ABUSE_PAYMENTS_INTENTS_PER_HOUR_PER_USER": "-1"}, "must be between 0"),
        ({}, {"TOLLGATE_ABUSE_PAYMENTS_NEW_ACCOUNT_TOPUP_USD": "1e400"}, "at most 8 decimals"),
        ({}, {"TOLLGATE_ABUSE_PAYMENTS_NEW_ACCOUNT_TOPUP_USD": "0.000000001"}, "at most 8 decimals"),
        ({"trusted_proxies": ["not-an-ip"]}, {}, "'not-an-ip' is not an IP address"),
    ],
)
def test_a_wrong_knob_is_refused_with_its_name(table, env, named):
    with pytest.raises(AbuseConfigError) as refused:
        load_abuse_settings(table, env)
    assert named in str(refused.value)


def test_the_ledger_policy_names_every_payment_and_velocity_knob():
    policy = AbuseSettings().ledger_policy()
    assert policy["payments.intents_per_hour_per_user"] == Decimal(10)
    assert policy["velocity.pause"] == Decimal(0)  # booleans as 0/1
    assert all(isinstance(value, Decimal) for value in policy.values())
    assert all(name.split(".")[0] in ("payments", "velocity") for name in policy)


def test_the_gateway_settings_read_the_abuse_section_of_the_tool_configuration(tmp_path: Path):
    config = tmp_path / "tollgate.toml"
    config.write_text('[abuse]\ntrusted_proxies = ["192.0.2.0/24"]\n[abuse.payments]\nnew_account_topups = 1\n')
    settings = load_settings({"TOLLGATE_TOOLS_CONFIG": str(config), "TOLLGATE_DATA_DIR": str(tmp_path)})
    assert settings.abuse.trusted_proxies == ("192.0.2.0/24",)
    assert settings.abuse.payments.new_account_topups == 1

    config.write_text("[abuse]\nnew_knob = 1\n")
    with pytest.raises(ValueError, match="new_knob"):
        load_settings({"TOLLGATE_TOOLS_CONFIG": str(config), "TOLLGATE_DATA_DIR": str(tmp_path)})
