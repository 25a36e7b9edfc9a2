# Multi-stage build: a pinned Rust toolchain builds the release binary; the runtime image holds
# only that binary on a distroless, non-root base.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY src ./src
# Cargo.toml names the benches; cargo refuses a manifest whose targets are missing.
COPY benches ./benches
RUN cargo build --release --locked --bin apikey-rotator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/apikey-rotator /usr/local/bin/apikey-rotator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/apikey-rotator"]
CMD ["run"]
