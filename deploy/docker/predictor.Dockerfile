# Predictor image: CPU libtorch only, non-root, read-only root filesystem friendly.
#   docker build -f deploy/docker/predictor.Dockerfile -t goemotions-predictor .
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Slim CPU torch (libtorch for tch), then the runtime tree: /out/bin/predictor + /out/lib/{torch,nvidia}/...
RUN TORCH_VARIANT=cpu scripts/setup.sh \
 && . .cache/env.sh \
 && cargo build --release --bin predictor \
 && scripts/assemble-runtime.sh /out target/release/predictor

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin predictor
COPY --from=build /out /app
USER 10001
EXPOSE 50051 9090
ENTRYPOINT ["/app/bin/predictor"]
CMD ["serve"]
