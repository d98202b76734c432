# Predictor image: the CPU libtorch libraries only, non-root (uid 10001), runs with a read-only
# root filesystem; `predictor health` is its health check (no extra binary). Two ways to build:
#
#   from source, with public base images (what a user runs):
#     docker build -f deploy/docker/predictor.Dockerfile -t goemotions-predictor .
#   from the runtime tree of a binary built on the host (scripts/docker-images.sh; no pulls):
#     docker build -f deploy/docker/predictor.Dockerfile --target prebuilt \
#       --build-arg BASE_IMAGE=goemotions/debian:bookworm -t goemotions-predictor .
#
# `prebuilt` comes first: the legacy builder builds every stage up to its target, so that one
# never needs the builder image. BASE_IMAGE / BUILDER_IMAGE replace the public images (a mirror,
# or the debootstrap base that scripts/docker/base-image.sh makes where nothing can be pulled).
ARG BASE_IMAGE=debian:bookworm-slim
ARG BUILDER_IMAGE=rust:1.88-bookworm

FROM ${BASE_IMAGE} AS runtime
RUN if [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin predictor
USER 10001
EXPOSE 50051 8080 9090
ENV PREDICTOR_LISTEN=0.0.0.0:50051 PREDICTOR_METRICS_LISTEN=0.0.0.0:9090
HEALTHCHECK --interval=5s --timeout=4s --start-period=60s --retries=3 CMD ["/app/bin/predictor", "health"]
ENTRYPOINT ["/app/bin/predictor"]
CMD ["serve"]

# The runtime tree scripts/docker-images.sh assembled from a host build (bin/ and lib/ only).
FROM runtime AS prebuilt
COPY --chown=0:0 deploy/docker/prebuilt/predictor/ /app/

FROM ${BUILDER_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Slim CPU torch (libtorch for tch), then the runtime tree: /out/bin/predictor + /out/lib/torch/lib/...
RUN TORCH_VARIANT=cpu scripts/setup.sh \
 && . .cache/env.sh \
 && cargo build --release --bin predictor \
 && scripts/assemble-runtime.sh /out target/release/predictor

FROM runtime
COPY --from=build /out /app
