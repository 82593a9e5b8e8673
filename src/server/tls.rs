//! TLS on the gRPC port, with rustls (ring): the server's certificate and
//! key, and optionally a CA whose client certificates are accepted (mTLS).
//!
//! The files are read again on [`TlsFiles`] reload (SIGHUP), so a renewed
//! certificate is served without a restart: each new connection takes the
//! configuration current when it arrives. Client certificates are optional
//! even with a CA configured; a caller without one authenticates with a
//! token instead.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

/// Where the PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// CA certificates that sign accepted client certificates.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

fn read_certs(path: &PathBuf, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("cannot read the {what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "the {what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn build(paths: &TlsPaths) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&paths.cert, "certificate file")?;
    let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| {
        TlsError(format!(
            "cannot read the private key {}: {e}",
            paths.key.display()
        ))
    })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = match &paths.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca, "client CA file")? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError(format!("client CA {}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(format!("certificate and key do not fit: {e}")))?;
    // h2 first; http/1.1 for the HTTP/JSON face's HTTP/1.1 clients.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS configuration in force, reloadable.
#[derive(Debug)]
pub struct TlsFiles {
    paths: TlsPaths,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsFiles {
    /// Reads and checks the files.
    pub fn load(paths: TlsPaths) -> Result<Self, TlsError> {
        let config = build(&paths)?;
        Ok(Self {
            paths,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again; on any error the configuration in force is
    /// kept.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.paths)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// An acceptor with the configuration now in force.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}
