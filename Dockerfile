# syntax=docker/dockerfile:1
# sluicegate: the release binary (glibc, no other shared libraries) on debian:bookworm-slim.
#   docker build -t sluicegate .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=... -e SQS_QUEUE_URL=... \
#     -e DOWNSTREAM_URL=... -e API_TOKENS=... -e DRAIN_TOKEN=... -e CALLBACK_SECRET=... sluicegate
# Other commands: `docker run --rm sluicegate migrate`, `... sluicegate openapi`.

# ---------------------------------------------------------------- build
FROM rust:1-bookworm AS builder
WORKDIR /build
# The build context is cut down by .dockerignore to what the build needs
# (Cargo.toml, Cargo.lock, src/, migrations/, and openapi/ and build.rs when
# they exist), so one COPY takes them all and a missing optional one cannot
# fail it. Migrations are embedded in the binary (sqlx::migrate!).
COPY . .
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/sluicegate /out/sluicegate

# ---------------------------------------------------------------- run
FROM debian:bookworm-slim
# ca-certificates: TLS to AWS (SQS) and to an https downstream.
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
# No HEALTHCHECK: the slim image has no curl or wget. Probe GET /healthz
# (liveness, no dependency checks) and GET /readyz (Postgres and SQS reachable)
# from the orchestrator instead (Kubernetes httpGet probes, ECS/ALB health checks).
ENTRYPOINT ["/usr/local/bin/sluicegate"]
CMD ["serve"]
