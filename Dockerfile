# syntax=docker/dockerfile:1
# sluicegate: the release binary (glibc, no other shared libraries) on debian:bookworm-slim.
#   docker build -t sluicegate .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=... -e SQS_QUEUE_URL=... \
#     -e DOWNSTREAM_URL=... -e PUBLIC_BASE_URL=... \
#     -e API_TOKENS=... -e DRAIN_TOKEN=... -e CALLBACK_SECRET=... sluicegate
# Other commands: `docker run --rm sluicegate migrate`, `... sluicegate openapi`.
# Production: deploy/sluicegate.yaml (ECS Fargate) and docs/operations.md.
# Checked by scripts/check-deploy (hadolint, and that ENTRYPOINT, CMD and
# HEALTHCHECK name commands the binary has).

# ---------------------------------------------------------------- build
FROM rust:1-bookworm AS builder
WORKDIR /build
# Compile-checked SQL reads the committed .sqlx/ cache, never a live database.
ENV SQLX_OFFLINE=true
# Dependencies first, in a layer of their own: it is rebuilt only when
# Cargo.toml or Cargo.lock change. Stub sources stand in for the crate (the
# manifest also names a bench target, whose stub is all the build needs).
# The repository is a workspace: cargo reads the manifest of its other member,
# the test kit, whose stub library is never built (a release build of the
# root package does not compile dev-dependencies).
COPY Cargo.toml Cargo.lock ./
COPY testkit/Cargo.toml ./testkit/
RUN mkdir -p src benches testkit/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs testkit/src/lib.rs \
 && echo 'fn main() {}' > benches/throughput.rs \
 && cargo build --release --locked -p sluicegate \
 && rm -rf src
# Then the crate itself. The build context is cut down by .dockerignore; the
# migrations are embedded in the binary (sqlx::migrate!), .sqlx/ holds the
# offline query cache once there is one (the glob lets a missing one pass).
COPY src ./src
COPY migrations ./migrations
COPY .sqlx* ./.sqlx/
# touch: the stub build left newer artifacts than the copied sources' times.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked -p sluicegate \
 && install -D -m 0755 target/release/sluicegate /out/sluicegate

# ---------------------------------------------------------------- run
FROM debian:bookworm-slim
# ca-certificates: TLS to AWS (SQS), to Postgres and to an https downstream.
# Not pinned: the security updates of the base image's suite are wanted.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sluicegate \
 && useradd --system --uid 10001 --gid sluicegate --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sluicegate
COPY --from=builder /out/sluicegate /usr/local/bin/sluicegate
USER 10001:10001
# Inside a container the service must listen on all interfaces. Set
# PUBLIC_BASE_URL too (the URL the downstream can reach this service on): its
# default, http://<LISTEN_ADDR>, would hand the downstream http://0.0.0.0:8080.
ENV LISTEN_ADDR=0.0.0.0:8080
EXPOSE 8080
# Liveness without curl: the binary probes its own GET /healthz on the port
# of LISTEN_ADDR (exit 0 on 200 within 3 s). Readiness (Postgres and SQS) is
# GET /readyz, for the load balancer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/sluicegate", "healthcheck"]
# SIGTERM (docker stop, ECS) starts the graceful shutdown.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sluicegate"]
CMD ["serve"]
