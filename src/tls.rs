//! TLS on the client listener (rustls with the ring provider) for clients that reach the
//! gateway directly, such as mobile apps at the edge.
//!
//! - TLS 1.3 and 1.2 only; ALPN offers `h2` first, then `http/1.1`.
//! - Stateless session tickets (rotating ticket keys), so a reconnecting phone resumes instead of
//!   paying for a full handshake. No 0-RTT: early data can be replayed, and a session
//!   registration is not idempotent.
//! - The certificate follows its files on disk: cert-manager (or anyone) replaces the PEM files
//!   and the next handshake presents the new pair, no restart, open connections untouched. The
//!   files are checked on every handshake rather than on a timer: two `stat` calls cost about a
//!   microsecond next to the hundreds a handshake's signature takes, and a renewal then takes
//!   effect at once, with no background task to own. A new pair that does not parse or whose key
//!   does not match the certificate is refused with a warning and the previous pair stays in use.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::Tls;
use crate::reload::Reloading;

/// ALPN protocols in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Serves the certificate pair currently on disk (see the module doc).
#[derive(Debug)]
pub struct CertFiles(Reloading<Arc<CertifiedKey>>);

impl CertFiles {
    /// Loads the pair once; an unusable pair fails start-up.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, String> {
        let paths = vec![cert_file.to_owned(), key_file.to_owned()];
        Ok(Self(Reloading::new("tls certificate", paths, load_pair)?))
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.current()
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn open(path: &Path, what: &str) -> Result<BufReader<File>, String> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| format!("cannot read tls {what} file {}: {e}", path.display()))
}

/// `[cert_file, key_file]` → a certified key whose private key matches the leaf certificate.
fn load_pair(paths: &[PathBuf]) -> Result<Arc<CertifiedKey>, String> {
    let [cert_file, key_file] = paths else {
        return Err("expected a certificate file and a key file".into());
    };
    let chain = rustls_pemfile::certs(&mut open(cert_file, "certificate")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM in {}: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert_file.display()));
    }
    let key = rustls_pemfile::private_key(&mut open(key_file, "key")?)
        .map_err(|e| format!("invalid PEM in {}: {e}", key_file.display()))?
        .ok_or_else(|| format!("no private key in {}", key_file.display()))?;
    let certified = CertifiedKey::from_der(chain, key, &ring::default_provider()).map_err(|e| {
        format!(
            "{} and {} do not form a usable pair: {e}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// The rustls server configuration for `tls`; reads the files once, failing fast.
pub fn server_config(tls: &Tls) -> Result<Arc<ServerConfig>, String> {
    let certs = CertFiles::load(&tls.cert_file, &tls.key_file)?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.ticketer = ring::Ticketer::new().map_err(|e| format!("tls session tickets: {e}"))?;
    Ok(Arc::new(config))
}

/// The acceptor the client listener uses for `tls`.
pub fn acceptor(tls: &Tls) -> Result<TlsAcceptor, String> {
    server_config(tls).map(TlsAcceptor::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reload::tests::replace;

    fn pair(cn: &str) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn leaf(files: &CertFiles) -> Vec<u8> {
        files.current().cert[0].to_vec()
    }

    #[test]
    fn a_new_pair_is_served_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (a_cert, a_key, a_der) = pair("a");
        std::fs::write(&cert, &a_cert).unwrap();
        std::fs::write(&key, &a_key).unwrap();
        let files = CertFiles::load(&cert, &key).unwrap();
        assert_eq!(leaf(&files), a_der);

        let (b_cert, b_key, b_der) = pair("b");
        // Certificate replaced before its key: a mismatched pair, refused.
        replace(&cert, &b_cert);
        assert_eq!(leaf(&files), a_der, "mismatched key keeps the old pair");
        replace(&key, &b_key);
        assert_eq!(
            leaf(&files),
            b_der,
            "once the key follows, the new pair is served"
        );

        replace(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n");
        assert_eq!(
            leaf(&files),
            b_der,
            "unparsable certificate keeps the old pair"
        );
        replace(&cert, "");
        assert_eq!(
            leaf(&files),
            b_der,
            "empty certificate file keeps the old pair"
        );
    }

    #[test]
    fn unusable_files_fail_start_up_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let err = CertFiles::load(&cert, &key).unwrap_err();
        assert!(err.contains("tls.crt"), "{err}");
        let (a_cert, _, _) = pair("a");
        let (_, b_key, _) = pair("b");
        std::fs::write(&cert, &a_cert).unwrap();
        std::fs::write(&key, "").unwrap();
        let err = CertFiles::load(&cert, &key).unwrap_err();
        assert!(err.contains("no private key"), "{err}");
        std::fs::write(&key, &b_key).unwrap();
        let err = CertFiles::load(&cert, &key).unwrap_err();
        assert!(err.contains("usable pair"), "{err}");
    }
}
