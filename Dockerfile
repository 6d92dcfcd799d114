# syntax=docker/dockerfile:1
# One image for every carebus service; the service is chosen by the command:
#   docker build -t carebus .
#   docker run --rm -p 8080:8080 -p 2575:2575 carebus                       # intake (the default)
#   docker run --rm -p 8081:8081 carebus python -m services.mapper
#   docker run --rm -p 8082:8082 carebus python -m services.record
# Settings come from CAREBUS_* environment variables (services/common/settings.py); deploy/k8s sets them.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# a C compiler for mypyc, which compiles the mapping modules (setup.py); only this stage has it
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python -m venv /opt/carebus
COPY pyproject.toml setup.py README.md* ./
COPY services ./services
# A regular (not editable) install: the package, its compiled modules and its dependencies land in the
# virtualenv's site-packages.
RUN /opt/carebus/bin/pip install . \
    && /opt/carebus/bin/python -c "from services.common.native import compiled_modules as c; assert c(), 'not compiled'"

FROM python:3.11-slim
RUN groupadd --system --gid 10001 carebus \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin carebus
COPY --from=build /opt/carebus /opt/carebus
ENV PATH=/opt/carebus/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CAREBUS_HTTP_HOST=0.0.0.0 \
    CAREBUS_CACHE_DIR=/tmp/carebus
# Nothing is written outside /tmp: the root filesystem can be mounted read-only (deploy/k8s does).
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080 2575 8081 8082
STOPSIGNAL SIGTERM
CMD ["python", "-m", "services.intake"]
