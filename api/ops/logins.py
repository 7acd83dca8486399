"""The URLs the CLI and the gateway log in with, resolved from the settings (``api.ledger.roles`` says who
each login is and checks it).

``owner_url`` is the owner's (``TOLLGATE_DATABASE_URL``, or the embedded server's, started if needed): only
migrations and ``tollgate db`` use it. ``login_url``/``login_urls`` are the run-time logins, one per
authority: configured (``TOLLGATE_<AUTHORITY>_DATABASE_URL``) or derived from the owner's URL. This lives in
``api.ops`` because resolving the embedded server's URL may start it.
"""

from __future__ import annotations

from api.gateway.config import Settings
from api.ledger.roles import Authority, NoDatabaseURL, derive_login_url
from api.ops import embedded


def owner_url(settings: Settings) -> str:
    """The URL migrations use: TOLLGATE_DATABASE_URL, or the embedded server's (started if needed)."""
    if settings.database_url is None and not settings.embedded:
        configured = ", ".join(sorted(a.url_variable for a in settings.login_urls))
        raise NoDatabaseURL(
            f"this needs the owner's URL, TOLLGATE_DATABASE_URL, which is not set; only the gateway's logins are"
            f" ({configured}), and they may not migrate or open a SQL shell as the owner"
        )
    return embedded.database_url(settings)


def login_url(settings: Settings, authority: Authority, owner: str | None = None) -> str:
    """The URL of ``authority``'s login: configured, else derived from the owner's URL (``owner`` if
    given, else resolved, which may start the embedded server)."""
    configured = settings.login_urls.get(authority)
    if configured is not None:
        return configured
    if owner is None:
        if settings.database_url is None and not settings.embedded:
            raise NoDatabaseURL(
                f"{authority.url_variable} is not set, and there is no TOLLGATE_DATABASE_URL to derive it from"
            )
        owner = owner_url(settings)
    return derive_login_url(owner, authority, settings.login_password)


def login_urls(settings: Settings, owner: str | None = None) -> dict[Authority, str]:
    """Every authority's URL (see ``login_url``), the owner's URL resolved once if any is derived."""
    derivable = settings.database_url is not None or settings.embedded
    if owner is None and derivable and any(authority not in settings.login_urls for authority in Authority):
        owner = owner_url(settings)
    return {authority: login_url(settings, authority, owner) for authority in Authority}
