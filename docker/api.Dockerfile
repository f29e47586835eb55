# The feedrank API (and migration runner): `feedrank-api serve` / `feedrank-api migrate`.
# Build context: the repository root (docker compose build api).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY rust ./rust
COPY api ./api
COPY migrations ./migrations
# The workspace lists the binding crate too; only the API is built (migrations are embedded).
RUN cargo build --release --locked -p feedrank-api \
    && cp target/release/feedrank-api /usr/local/bin/feedrank-api

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 feedrank
COPY --from=build /usr/local/bin/feedrank-api /usr/local/bin/feedrank-api
USER feedrank
ENV BIND_ADDR=0.0.0.0:8080
EXPOSE 8080
CMD ["feedrank-api", "serve"]
