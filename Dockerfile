# DCNR's one image: dcnr-orchestrator, dcnr-agent, dcnctl and the operator, installed from
# the project's wheel. `make image` builds it. The final stage has no compilers and no
# source tree: only the installed wheels.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY . .
# Our wheel, then wheels of all its dependencies (with the operator extra: kopf). Every
# dependency ships binary wheels for linux/amd64 and arm64, so nothing is compiled here either.
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels "$(ls /wheels/dcnr-*.whl)[operator]"

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG SOURCE_URL=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="dcnr" \
      org.opencontainers.image.description="DCNR: orchestrator, agent, dcnctl and operator for neural networks on volunteer machines" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 dcnr \
 && useradd --system --uid 10001 --gid dcnr --home-dir /var/lib/dcnr --create-home dcnr
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links /wheels "dcnr[operator]"
ENV PYTHONUNBUFFERED=1 \
    XDG_STATE_HOME=/var/lib
USER 10001:10001
WORKDIR /var/lib/dcnr
EXPOSE 7070 9090 7100
# Any of the three console scripts runs by name (`docker run IMAGE dcnctl get pnodes`);
# the default is the control plane, over TLS from a kubernetes.io/tls Secret (or any
# certificate and key) mounted at /etc/dcnr/tls; it says which file is missing otherwise.
CMD ["dcnr-orchestrator", "serve", "--listen", "0.0.0.0:7070", "--metrics-listen", "0.0.0.0:9090", \
     "--tls-cert", "/etc/dcnr/tls/tls.crt", "--tls-key", "/etc/dcnr/tls/tls.key"]
