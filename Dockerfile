# One image with every shop binary; docker-compose picks the binary per service.
#   docker build -t shop .
# Stage 1 builds with the same toolchain as local development (rustc 1.95); librdkafka is
# compiled from source by the rdkafka crate (needs make, gcc, zlib and OpenSSL headers).
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update \
 && apt-get install -y --no-install-recommends zlib1g-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked \
      -p command-api -p projections -p saga-orchestrator -p web-console -p shopctl \
 && mkdir /out \
 && cp target/release/command-api target/release/projections \
       target/release/saga-orchestrator target/release/web-console target/release/shopctl /out/

# Stage 2: a slim runtime with curl for health checks, running as an unprivileged user.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl zlib1g libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 shop
COPY --from=build /out/ /usr/local/bin/
USER shop
CMD ["command-api"]
