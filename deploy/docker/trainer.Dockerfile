# Trainer image: the full PyPI torch 2.11.0 (CUDA 13 libraries included), for GPU nodes.
#   docker build -f deploy/docker/trainer.Dockerfile -t goemotions-trainer .
FROM rust:1.88-bookworm AS build
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

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin trainer
COPY --from=build /out /app
ENV GOEMOTIONS_BASE_MODEL=/app/models/all-MiniLM-L6-v2 GOEMOTIONS_DATA_DIR=/app/data/goemotions
USER 10001
EXPOSE 50052
ENTRYPOINT ["/app/bin/trainer"]
CMD ["serve"]
