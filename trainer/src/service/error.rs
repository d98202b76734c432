//! The trainer service's errors and their one mapping to gRPC status codes.
use common::registry::RegistryError;
use common::store::StoreError;
use tonic::Status;

use crate::config::WireError;
use crate::validate::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no job {0:?}")]
    UnknownJob(String),
    #[error("job {0} is running; this trainer runs one job at a time")]
    Busy(String),
    #[error("job {0} has already ended")]
    Ended(String),
    #[error("job {0} is already published")]
    Published(String),
    #[error("the trainer is shutting down; retry on the restarted trainer")]
    ShuttingDown,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("job records: {0}")]
    Store(#[from] StoreError),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::UnknownJob(_) => Status::not_found(message),
            ServiceError::Busy(_) | ServiceError::Ended(_) | ServiceError::Published(_) => {
                Status::failed_precondition(message)
            }
            ServiceError::ShuttingDown => Status::unavailable(message),
            ServiceError::Wire(_) => Status::invalid_argument(message),
            ServiceError::Invalid(ValidationError::Invalid { .. }) => {
                Status::invalid_argument(message)
            }
            ServiceError::Invalid(ValidationError::Unreachable { .. }) => {
                Status::unavailable(message)
            }
            ServiceError::Registry(r) => match r {
                RegistryError::UnknownVersion { .. } | RegistryError::UnknownAlias { .. } => {
                    Status::not_found(message)
                }
                RegistryError::AliasMoved { .. } | RegistryError::VersionExists { .. } => {
                    Status::failed_precondition(message)
                }
                RegistryError::InvalidName(_) => Status::invalid_argument(message),
                _ => Status::unavailable(message),
            },
            ServiceError::Store(_) => Status::unavailable(message),
        }
    }
}
