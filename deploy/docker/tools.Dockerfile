# Python tools for the stack: moto's S3 server (atomic conditional writes) and the gRPC client
# the container cases drive load with (grpcio, stubs generated from proto/ at build time).
#   docker build -f deploy/docker/tools.Dockerfile [--build-arg BASE_IMAGE=...] -t goemotions-tools .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/tools \
 && /opt/tools/bin/pip install --no-cache-dir -q 'moto[server]==5.1.18' 'grpcio==1.85.3' 'grpcio-tools==1.76.0' \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin tools
COPY proto/goemotions /opt/proto/goemotions
COPY deploy/compose/tools/ /opt/tools/scripts/
RUN mkdir -p /opt/gen && /opt/tools/bin/python -m grpc_tools.protoc -I /opt/proto --python_out=/opt/gen \
      --grpc_python_out=/opt/gen /opt/proto/goemotions/v1/predictor.proto /opt/proto/goemotions/v1/trainer.proto
ENV PATH=/opt/tools/bin:$PATH PYTHONPATH=/opt/gen PYTHONUNBUFFERED=1
USER 10001
CMD ["python", "/opt/tools/scripts/s3.py", "--bucket", "registry"]
