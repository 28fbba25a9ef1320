# Image for the ACB services (ledger, catalog, ...): `docker run IMAGE ledger run`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ACB_HOME=/var/lib/acb

WORKDIR /src
COPY . /src
RUN pip install . \
    && useradd --system --home-dir "$ACB_HOME" --create-home acb

# migrations/ stays in /src, so `alembic -c migrations/alembic.ini` works from here.
USER acb
ENTRYPOINT ["acb"]
CMD ["--help"]
