# holdfast container: the daemon and CLI, with the database clients its
# PostgreSQL and MariaDB sources call.
#
#   docker build -t holdfast .
#   docker run --rm -v "$PWD/plans:/etc/holdfast/plans:ro" holdfast plan check /etc/holdfast/plans/app.yaml
#
# Base images are pinned to a Rust release and a Debian point release; bump them
# together with rust-toolchain / the CI machine. Builder and runtime are both
# bookworm so the binary links against the glibc it runs with.

ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=debian:12.15-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src

# make builds jemalloc, the binary's allocator (tikv-jemalloc-sys); the slim
# image has gcc but not make.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-* \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, against stub sources, so this layer is reused until
# Cargo.toml or Cargo.lock change; editing src/ rebuilds holdfast only.
# (Should Cargo.toml name [[bench]]/[[test]] files by path, copy those too:
# cargo reads them when it loads the manifest.)
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin holdfast \
    && rm -rf src

COPY src src
# The stubs' build outputs are newer than the copied sources: touch them so
# cargo rebuilds the real crate.
RUN touch src/lib.rs src/main.rs \
    && cargo build --release --locked --bin holdfast \
    && install -m 0755 target/release/holdfast /usr/local/bin/holdfast

FROM ${RUNTIME_IMAGE}

# Client majors follow Debian 12 (PostgreSQL 15, MariaDB 10.11); the wildcard
# keeps the major fixed while taking Debian's security updates. pg_dump cannot
# dump a newer server than itself: for PostgreSQL 16+ add the PGDG repository.
# postgresql-15 (the server package) brings pg_waldump, which point-in-time
# restores to a time need, and pg_ctl for `restore --start`; no server runs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates=2025* \
        mariadb-client=1:10.11.* \
        postgresql-client=15+* \
        postgresql-15=15.* \
        tini=0.19.* \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 holdfast \
    && useradd --system --uid 10001 --gid holdfast \
        --home-dir /var/lib/holdfast --create-home --shell /usr/sbin/nologin holdfast \
    && mkdir -p /etc/holdfast/plans

COPY --from=builder /usr/local/bin/holdfast /usr/local/bin/holdfast

# Numeric, so Kubernetes' runAsNonRoot can verify it (10001 is `holdfast`).
USER 10001:10001
WORKDIR /var/lib/holdfast
VOLUME ["/var/lib/holdfast"]

# tini as PID 1 forwards SIGTERM to holdfast (so the daemon drains and stops
# cleanly) and reaps the pg_dump / mariadb-dump children it runs.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/holdfast"]
CMD ["--help"]
