# Build: a full Rust toolchain; run: a slim Debian with CA certificates and the one binary.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir src bench migrations config \
    && for f in src/main.rs bench/bare_actix.rs bench/cache_memory.rs; do echo 'fn main() {}' > "$f"; done \
    && touch src/lib.rs && cargo build --release --locked --bin usage-gate
COPY src src
COPY bench bench
COPY migrations migrations
COPY config config
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin usage-gate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 usage-gate
COPY --from=build /src/target/release/usage-gate /usr/local/bin/usage-gate
USER usage-gate
ENV USAGE_GATE__SERVER__ADDRESS=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["usage-gate", "healthcheck"]
ENTRYPOINT ["usage-gate"]
CMD ["serve"]
