# syntax=docker/dockerfile:1
# blogctl: one image for every service (`docker compose up`) and for the client.

FROM rust:1-bookworm AS builder
WORKDIR /build
# Only what the build needs, so the context sent stays small (no target/).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The caches keep downloaded crates and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked \
    && cp target/release/blogctl /usr/local/bin/blogctl

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin blogctl
COPY --from=builder /usr/local/bin/blogctl /usr/local/bin/blogctl
USER blogctl
ENTRYPOINT ["blogctl"]
CMD ["--help"]
