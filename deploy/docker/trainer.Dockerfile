# Trainer image: the trainer with libtorch, the pretrained encoder and the GoEmotions splits
# (CC BY 4.0, SOURCE.md inside), non-root (uid 10001); `trainer health` is its health check.
#
#   from source, with public base images: the full PyPI torch (CUDA 13 libraries included) for
#   GPU nodes:
#     docker build -f deploy/docker/trainer.Dockerfile -t goemotions-trainer .
#   from the runtime tree of a host build (scripts/docker-images.sh; no pulls; the libtorch the
#   host links, CPU-only by default):
#     docker build -f deploy/docker/trainer.Dockerfile --target prebuilt \
#       --build-arg BASE_IMAGE=goemotions/debian:bookworm -t goemotions-trainer .
ARG BASE_IMAGE=debian:bookworm-slim
ARG BUILDER_IMAGE=rust:1.88-bookworm

FROM ${BASE_IMAGE} AS runtime
RUN if [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin trainer
USER 10001
EXPOSE 50052
ENV GOEMOTIONS_BASE_MODEL=/app/models/all-MiniLM-L6-v2 GOEMOTIONS_DATA_DIR=/app/data/goemotions \
    TRAINER_LISTEN=0.0.0.0:50052
HEALTHCHECK --interval=5s --timeout=4s --start-period=30s --retries=3 CMD ["/app/bin/trainer", "health"]
ENTRYPOINT ["/app/bin/trainer"]
CMD ["serve"]

FROM runtime AS prebuilt
COPY --chown=0:0 deploy/docker/prebuilt/trainer/ /app/

FROM ${BUILDER_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN TORCH_VARIANT=cuda scripts/setup.sh \
 && . .cache/env.sh \
 && cargo build --release --bin trainer \
 && scripts/assemble-runtime.sh /out target/release/trainer \
 && cp -r .venv/lib/python3.11/site-packages/torch/lib/. /out/lib/torch/lib/ \
 && mkdir -p /out/lib/nvidia && cp -r .venv/lib/python3.11/site-packages/nvidia/. /out/lib/nvidia/ \
 && mkdir -p /out/models /out/data && cp -r .cache/models/all-MiniLM-L6-v2 /out/models/ \
 && cp -r .cache/data/goemotions /out/data/

FROM runtime
COPY --from=build /out /app
