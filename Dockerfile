# The Tollgate gateway. It needs a PostgreSQL (see docker-compose.yml); the embedded server of a developer
# checkout is not meant for containers. The image serves as three non-superuser logins given by
# TOLLGATE_METERING_DATABASE_URL, TOLLGATE_PAYMENTS_DATABASE_URL and TOLLGATE_OPERATOR_DATABASE_URL, and
# does not migrate: `tollgate migrate` does, once per upgrade, with the owner's TOLLGATE_DATABASE_URL
# (docker-compose.yml's `migrate` service), and makes those logins where that role may create roles.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOLLGATE_DB_DIR=/app/db \
    TOLLGATE_DATA_DIR=/var/lib/tollgate

WORKDIR /app
COPY . .
RUN pip install . \
    && useradd --system --home-dir /var/lib/tollgate --create-home tollgate

USER tollgate
EXPOSE 8000
# A plain command, no wrapper: tollgate is PID 1 and gets docker's SIGTERM itself. Other commands
# run the same way: `docker compose run --rm gateway tollgate topup …` (as the operator login),
# `docker compose run --rm migrate tollgate migrate status` (as the owner).
CMD ["tollgate", "run", "--no-migrate"]
