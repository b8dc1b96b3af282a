# k2proxy container image.
#
#   docker build -t k2proxy .
#   docker run -d --name k2proxy -p 8080:8080 --stop-timeout 70 \
#     -v "$PWD/conf:/etc/k2proxy:ro" -v k2proxy-state:/var/lib/k2proxy k2proxy
#
# The config comes from the /etc/k2proxy volume (k2proxy.yaml) and a writable
# /var/lib/k2proxy holds the tokens file. Without a mounted config the image runs the shipped
# defaults: guest mode on 0.0.0.0:8080. To scrape metrics from outside the container set
# `metrics.listen: "0.0.0.0:9091"` and publish 9091. The stop timeout must exceed
# server.grace_period (60s) so in-flight streams can finish on `docker stop`.

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin k2proxy \
 && strip target/release/k2proxy

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/k2proxy --shell /usr/sbin/nologin k2proxy \
 && install -d -o k2proxy -g k2proxy -m 0700 /var/lib/k2proxy \
 && install -d /etc/k2proxy
COPY --from=build /src/target/release/k2proxy /usr/local/bin/k2proxy
COPY conf/k2proxy.yaml /etc/k2proxy/k2proxy.yaml
USER k2proxy
WORKDIR /var/lib/k2proxy
VOLUME ["/var/lib/k2proxy"]
EXPOSE 8080 9091
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["/usr/local/bin/k2proxy"]
CMD ["-c", "/etc/k2proxy/k2proxy.yaml"]
