//! Access control shared by the predictor and trainer servers: bearer-token authentication (from
//! an environment variable or a file, never needing the command line), TLS, and a refusal to
//! listen beyond loopback without a token unless the operator says so explicitly.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Status};
use tonic_reflection::server::{v1, v1alpha};

/// Flags of a server's access control; flattened into `predictor serve` and `trainer serve`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AccessArgs {
    /// Require `authorization: Bearer <token>` on service calls (health and reflection stay
    /// open). Visible in `ps`: prefer the environment variable or --auth-token-file.
    #[arg(long, env = "GOEMOTIONS_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Read the bearer token from this file (first line; the safe way to pass it, e.g. a
    /// mounted Kubernetes secret).
    #[arg(
        long,
        env = "GOEMOTIONS_AUTH_TOKEN_FILE",
        conflicts_with = "auth_token"
    )]
    pub auth_token_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without a token.
    #[arg(long, env = "GOEMOTIONS_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long, env = "GOEMOTIONS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "GOEMOTIONS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: the auth token file is empty")]
    EmptyToken { path: String },
    #[error("the auth token must be printable ASCII without spaces")]
    BadToken,
    #[error("refusing to listen on {addr} without authentication: set --auth-token-file (or GOEMOTIONS_AUTH_TOKEN), listen on 127.0.0.1, or pass --allow-unauthenticated")]
    Unauthenticated { addr: SocketAddr },
    #[error("TLS configuration: {0}")]
    Tls(#[from] tonic::transport::Error),
    #[error("--http-listen serves plain HTTP and cannot be combined with --tls-cert/--tls-key; terminate TLS in front of it (ingress, mesh)")]
    PlainHttpWithTls,
}

fn read(path: &Path) -> Result<Vec<u8>, AccessError> {
    std::fs::read(path).map_err(|source| AccessError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The resolved access policy of a server.
#[derive(Clone)]
pub struct Access {
    token: Option<BearerToken>,
    tls: Option<(Vec<u8>, Vec<u8>)>,
}

impl Access {
    /// Reads the token and TLS files and checks that `listen` is not exposed without a token.
    pub fn from_args(args: &AccessArgs, listen: SocketAddr) -> Result<Self, AccessError> {
        let token = match (&args.auth_token, &args.auth_token_file) {
            (Some(t), _) => Some(BearerToken::new(t)?),
            (None, Some(path)) => {
                let text = String::from_utf8_lossy(&read(path)?).to_string();
                let first = text.lines().next().unwrap_or("").trim().to_string();
                if first.is_empty() {
                    return Err(AccessError::EmptyToken {
                        path: path.display().to_string(),
                    });
                }
                Some(BearerToken::new(&first)?)
            }
            (None, None) => None,
        };
        if token.is_none() && !listen.ip().is_loopback() && !args.allow_unauthenticated {
            return Err(AccessError::Unauthenticated { addr: listen });
        }
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        Ok(Self { token, tls })
    }

    pub fn authenticated(&self) -> bool {
        self.token.is_some()
    }

    /// The required token, for servers other than gRPC (the HTTP API) to check.
    pub fn token(&self) -> Option<BearerToken> {
        self.token.clone()
    }

    pub fn tls(&self) -> Option<ServerTlsConfig> {
        self.tls
            .as_ref()
            .map(|(cert, key)| ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
    }

    /// A tonic interceptor that enforces the token (a no-op without one).
    pub fn interceptor(&self) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
        let token = self.token.clone();
        move |req: Request<()>| match &token {
            None => Ok(req),
            Some(t) => t.check(&req).map(|()| req),
        }
    }
}

/// A bearer token compared in constant time.
#[derive(Clone)]
pub struct BearerToken(Vec<u8>);

impl BearerToken {
    pub fn new(token: &str) -> Result<Self, AccessError> {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AccessError::BadToken);
        }
        Ok(Self(token.as_bytes().to_vec()))
    }

    /// Checks the `authorization` metadata: the scheme is case-insensitive (RFC 7235), the
    /// token is not.
    pub fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            ));
        };
        let value = value.as_bytes();
        let (scheme, rest) = value.split_at(value.len().min(6));
        let given = rest.strip_prefix(b" ").map(|r| r.trim_ascii_start());
        match given {
            Some(given) if scheme.eq_ignore_ascii_case(b"bearer") && matches(given, &self.0) => {
                Ok(())
            }
            _ => Err(Status::unauthenticated("invalid bearer token")),
        }
    }
}

/// Compares in constant time so the token cannot be guessed byte by byte from timings.
fn matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Server reflection in both versions (grpcurl up to 1.8.x speaks only v1alpha), advertising
/// exactly `services` (plus reflection itself) from the encoded descriptor sets.
pub fn reflection(
    descriptor_sets: &[&'static [u8]],
    services: &[&str],
) -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        // The reflection services list themselves, so their own schemas are registered too:
        // every listed service must be describable (buf curl --list-methods stops at the
        // first one that is not).
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            );
        for set in descriptor_sets {
            b = b.register_encoded_file_descriptor_set(set);
        }
        for name in services.iter().copied().chain([
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]) {
            b = b.with_service_name(name);
        }
        b
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// Flags of the `health` command of both binaries: a gRPC health check for container and
/// orchestrator health probes (no extra binary in the image).
#[derive(clap::Args, Debug, Clone)]
pub struct HealthArgs {
    /// Server address (http://… or https://…; a plain host:port means http).
    #[arg(long, env = "HEALTH_ADDR")]
    pub addr: Option<String>,
    /// PEM CA certificate to trust for an https:// address, besides the system roots.
    #[arg(long, env = "HEALTH_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Service to check ("" is the server as a whole).
    #[arg(long, default_value = "")]
    pub service: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3.0)]
    pub timeout_secs: f64,
}

/// Why an address cannot be dialled.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid address {addr}: {message}")]
    Address { addr: String, message: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// A client endpoint for `addr` (`http://…` or `https://…`); over https it trusts the system
/// roots and `ca_cert` (PEM) when given. One builder for every client the binaries have.
pub fn client_endpoint(
    addr: &str,
    ca_cert: Option<&std::path::Path>,
) -> Result<tonic::transport::Endpoint, EndpointError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let address = |message: String| EndpointError::Address {
        addr: addr.to_string(),
        message,
    };
    let mut endpoint =
        Endpoint::from_shared(addr.to_string()).map_err(|e| address(e.to_string()))?;
    if addr.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = ca_cert {
            let pem = std::fs::read(ca).map_err(|source| EndpointError::Read {
                path: ca.display().to_string(),
                source,
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| address(e.to_string()))?;
    }
    Ok(endpoint)
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("{addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("{addr}: health check answered {status}")]
    NotServing { addr: String, status: String },
}

/// Checks `grpc.health.v1` at `addr` (default `default_addr`): Ok when SERVING.
pub async fn check_health(args: &HealthArgs, default_addr: &str) -> Result<(), HealthError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let mut addr = args
        .addr
        .clone()
        .unwrap_or_else(|| default_addr.to_string());
    if !addr.contains("://") {
        addr = format!("http://{addr}");
    }
    let timeout = std::time::Duration::from_secs_f64(args.timeout_secs.clamp(0.1, 600.0));
    let unreachable = |message: String| HealthError::Unreachable {
        addr: addr.clone(),
        message,
    };
    let endpoint = client_endpoint(&addr, args.ca_cert.as_deref())?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| unreachable(format!("cannot connect: {e}")))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|s| unreachable(format!("{:?}: {}", s.code(), s.message())))?
        .into_inner()
        .status;
    let status = ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown);
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(HealthError::NotServing {
            addr,
            status: status.as_str_name().to_string(),
        })
    }
}

/// Resolves on SIGTERM (what Kubernetes sends) or Ctrl-C.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Binds `addr` before anything announces it: a port in use fails here, with the address.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, std::io::Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(v) = auth {
            r.metadata_mut().insert("authorization", v.parse().unwrap());
        }
        r
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_token_is_not() {
        let t = BearerToken::new("s3cret").unwrap();
        for ok in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "Bearer   s3cret",
        ] {
            assert!(t.check(&request(Some(ok))).is_ok(), "{ok}");
        }
        for bad in [
            None,
            Some("Bearer S3CRET"),
            Some("Bearer s3cre"),
            Some("Basic s3cret"),
            Some("Bearers3cret"),
            Some("Bearer"),
        ] {
            let err = t.check(&request(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn exposed_listen_address_needs_a_token_or_an_explicit_opt_out() {
        let public: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let none = AccessArgs::default();
        assert!(matches!(
            Access::from_args(&none, public),
            Err(AccessError::Unauthenticated { .. })
        ));
        assert!(Access::from_args(&none, local).is_ok());
        let opted_out = AccessArgs {
            allow_unauthenticated: true,
            ..Default::default()
        };
        assert!(!Access::from_args(&opted_out, public)
            .unwrap()
            .authenticated());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let with_file = AccessArgs {
            auth_token_file: Some(file.clone()),
            ..Default::default()
        };
        let access = Access::from_args(&with_file, public).unwrap();
        assert!((access.interceptor())(request(Some("Bearer from-file"))).is_ok());
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            Access::from_args(&with_file, public),
            Err(AccessError::EmptyToken { .. })
        ));
    }
}
