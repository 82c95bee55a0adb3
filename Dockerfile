# Build: the Rust toolchain (its image has gcc, make, pkg-config and libssl-dev for librdkafka
# and OpenSSL).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY schema schema
COPY benches benches
RUN cargo build --release --locked --bin cdc-audit

# Run: a small Debian with only the runtime libraries, as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --uid 10001 cdc-audit
COPY --from=build /src/target/release/cdc-audit /usr/local/bin/cdc-audit
USER cdc-audit
ENV CDC_AUDIT_HTTP_ADDR=0.0.0.0:9187
EXPOSE 9187
# The binary asks itself: GET /health/ready, no curl in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["/usr/local/bin/cdc-audit", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/cdc-audit"]
CMD ["run"]
