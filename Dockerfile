# syntax=docker/dockerfile:1
# jobledger: multi-stage build. The build stage needs only the Rust toolchain (protos are
# compiled by protox, no protoc); the runtime image holds the binary and CA roots.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin jobledger || true
COPY migrations migrations
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin jobledger \
    && strip target/release/jobledger

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin jobledger
COPY --from=build /src/target/release/jobledger /usr/local/bin/jobledger
USER 10001:10001
ENV JOBLEDGER_LISTEN_ADDR=0.0.0.0:50051 \
    JOBLEDGER_LOG_FORMAT=json
EXPOSE 50051
# Readiness of the whole server (database reachable); Kubernetes uses its own gRPC probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["jobledger", "health", "--addr", "http://127.0.0.1:50051"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["jobledger"]
CMD ["serve"]
