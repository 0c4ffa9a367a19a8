# syntax=docker/dockerfile:1.7.1
# blogctl: one image for every service (`docker compose up`) and for the client.
# Every image is pinned to a version, the build front end's too: the toolchain the project is
# tested with (rust 1.95.0), and the Debian release it builds on (bookworm, 12.12) for both
# stages, so that the binary finds the glibc it was linked against.

FROM rust:1.95.0-bookworm AS builder
WORKDIR /build
# Only what the build needs, so the context sent stays small (no target/).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The caches keep downloaded crates and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked \
    && cp target/release/blogctl /usr/local/bin/blogctl

FROM debian:12.12-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin blogctl
COPY --from=builder /usr/local/bin/blogctl /usr/local/bin/blogctl
USER blogctl
ENTRYPOINT ["blogctl"]
CMD ["--help"]
