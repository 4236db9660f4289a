# syntax=docker/dockerfile:1
# jobledger: multi-stage build. The build stage needs only the Rust toolchain (protos are
# compiled by protox, no protoc); the runtime image holds the binary and CA roots.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# The whole tree (see .dockerignore): Cargo.toml declares test and bench targets, and
# cargo refuses a manifest whose target files are missing. Rebuilds stay fast through
# BuildKit cache mounts for the registry and the target directory.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin jobledger \
    && cp target/release/jobledger /usr/local/bin/jobledger \
    && strip /usr/local/bin/jobledger

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin jobledger
COPY --from=build /usr/local/bin/jobledger /usr/local/bin/jobledger
USER 10001:10001
ENV JOBLEDGER_LISTEN_ADDR=0.0.0.0:50051 \
    JOBLEDGER_LOG_FORMAT=json
# 50051: gRPC (JobLedger, health, reflection, gRPC-Web); 9090: Prometheus /metrics;
# 8080: the HTTP/JSON API (docs/http.md).
EXPOSE 50051 9090 8080
# Readiness of the whole server (database reachable); Kubernetes uses its own gRPC probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["jobledger", "health", "--addr", "http://127.0.0.1:50051"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["jobledger"]
CMD ["serve"]
