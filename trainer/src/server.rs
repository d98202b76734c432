//! `trainer serve`: the gRPC server around `TrainerService` — health, reflection (v1 and
//! v1alpha, for older grpcurl), bearer-token auth and TLS, and a SIGTERM drain that lets the
//! running job save its state before the process exits.
use std::net::SocketAddr;
use std::time::Duration;

use common::grpc::{self, Access};
use proto::v1::trainer_server::TrainerServer;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

use crate::service::{ServiceError, TrainerService};

pub const SERVICE_NAME: &str = "goemotions.v1.Trainer";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Recovers recorded jobs, then serves until SIGTERM/Ctrl-C; on the signal, the running job gets
/// up to `grace` to save its state and stop before the server closes.
pub async fn serve(
    service: TrainerService,
    listen: SocketAddr,
    access: Access,
    grace: Duration,
) -> Result<(), ServerError> {
    service.recover().await?;
    let listener = grpc::bind(listen).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;
    let (reflection_v1, reflection_v1alpha) = grpc::reflection(
        &[
            proto::v1::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ],
        &[SERVICE_NAME, "grpc.health.v1.Health"],
    )?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = access.tls() {
        builder = builder.tls_config(tls)?;
    }
    tracing::info!(addr = %listen, tls = access.tls().is_some(), auth = access.authenticated(), "trainer service listening");
    let drain = service.clone();
    let shutdown = async move {
        grpc::termination_signal().await;
        tracing::info!(
            grace_seconds = grace.as_secs_f64(),
            "shutdown requested: stopping the running job at its next step"
        );
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
            .await;
        if !drain.shutdown(grace).await {
            tracing::warn!("the running job did not stop within the grace period; it resumes from its last saved state");
        }
    };
    builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(TrainerServer::with_interceptor(
            service,
            access.interceptor(),
        ))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    tracing::info!("trainer stopped");
    Ok(())
}
