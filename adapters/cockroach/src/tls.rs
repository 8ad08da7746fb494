//! TLS for PostgreSQL and CockroachDB connections, through rustls, set
//! the way libpq users set it: `sslmode` and `sslrootcert` in the
//! connection string.
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (the default) | when the server offers it | not checked |
//! | `require` | always | checked against `sslrootcert` when one is given (as `verify-ca`), else not checked |
//! | `verify-ca` | always | signed by `sslrootcert` (which it requires) |
//! | `verify-full` | always | signed by `sslrootcert` (the system's roots without it) and naming the host |
//!
//! `sslrootcert` is a PEM file of one or more certificates, or `system`
//! for the operating system's roots, which only `verify-full` accepts (and
//! which make it the default, as for libpq): they trust every public
//! certificate authority, so only a certificate naming the host proves
//! anything with them. Both forms of connection string are read:
//! `host=db.example.com sslmode=verify-full sslrootcert=/etc/ca.pem` and
//! `postgresql://app@db.example.com/bank?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem`.
//! A TLS configuration of the application's own replaces the one these
//! settings make ([`crate::PgConfig::tls`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quorate::Error;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// How a connection uses TLS (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, the certificate not checked (`allow`
    /// and `prefer`; libpq's `allow` tries without TLS first, this tries
    /// with it first).
    Prefer,
    /// TLS, the certificate checked only when a root certificate is given.
    Require,
    /// TLS, the certificate signed by a trusted root.
    VerifyCa,
    /// TLS, the certificate signed by a trusted root and naming the host.
    VerifyFull,
}

impl SslMode {
    /// The mode named `text` (libpq's names).
    pub fn parse(text: &str) -> Result<SslMode, Error> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::InvalidInput(format!(
                    "unknown sslmode {other:?}: use disable, allow, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }
}

/// A connection string's TLS settings, taken out of it, and the rest of
/// it for tokio-postgres (never shown: it may hold a password).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode` (`prefer` when absent, as for libpq).
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file, or `system`.
    pub root_cert: Option<String>,
    /// The connection string without `sslmode` and `sslrootcert`.
    pub rest: String,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .finish_non_exhaustive()
    }
}

/// Splits the TLS settings out of a connection string, in either form
/// (`key=value …` or a `postgres://` / `postgresql://` URL). Nothing but
/// those two settings is changed; a malformed string is left for
/// tokio-postgres to refuse.
pub fn split(connection: &str) -> Result<TlsSettings, Error> {
    let trimmed = connection.trim_start();
    let (mode, root_cert, rest) =
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            split_url(connection)?
        } else {
            split_key_values(connection)?
        };
    let system = root_cert.as_deref() == Some("system");
    let mode = match mode {
        Some(m) => SslMode::parse(&m)?,
        // As libpq: the system's roots make verify-full the default.
        None if system => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    // The system's roots trust every public certificate authority: only
    // a certificate naming the host proves anything with them.
    if system && mode != SslMode::VerifyFull {
        return Err(Error::InvalidInput(
            "sslrootcert=system needs sslmode=verify-full".into(),
        ));
    }
    if mode == SslMode::VerifyCa && root_cert.is_none() {
        return Err(Error::InvalidInput(
            "sslmode=verify-ca needs sslrootcert: the file of the certificate authority that signs the server's certificate".into(),
        ));
    }
    Ok(TlsSettings {
        mode,
        root_cert,
        rest,
    })
}

type Split = (Option<String>, Option<String>, String);

fn split_url(connection: &str) -> Result<Split, Error> {
    // The query starts at the first `?` after the credentials, which end
    // at the first `@` (as tokio-postgres reads them): a password may hold
    // a `?`.
    let after_scheme = connection.find("://").map_or(0, |i| i + 3);
    let from = connection[after_scheme..]
        .find('@')
        .map_or(after_scheme, |i| after_scheme + i + 1);
    let Some(at) = connection[from..].find('?').map(|i| from + i) else {
        return Ok((None, None, connection.to_owned()));
    };
    let (base, query) = (&connection[..at], &connection[at + 1..]);
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => mode = Some(percent_decode(value)?),
            "sslrootcert" => root = Some(percent_decode(value)?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((mode, root, rest))
}

fn percent_decode(text: &str) -> Result<String, Error> {
    let bad = || {
        Error::InvalidInput(
            "a TLS setting of the connection string is not valid percent-encoded UTF-8".into(),
        )
    };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// libpq's `key = value` form: values bare (up to whitespace, `\` escaping
/// the next character) or single-quoted (`\'` and `\\` inside).
fn split_key_values(connection: &str) -> Result<Split, Error> {
    let (mut mode, mut root) = (None, None);
    let mut rest = String::with_capacity(connection.len());
    let chars: Vec<(usize, char)> = connection.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].1.is_whitespace() {
            i += 1;
            continue;
        }
        let start = chars[i].0;
        let mut key = String::new();
        while i < chars.len() && chars[i].1 != '=' && !chars[i].1.is_whitespace() {
            key.push(chars[i].1);
            i += 1;
        }
        while i < chars.len() && chars[i].1.is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || chars[i].1 != '=' {
            // Not `key=value`: left as it is for tokio-postgres to refuse.
            push_setting(&mut rest, &connection[start..]);
            break;
        }
        i += 1;
        while i < chars.len() && chars[i].1.is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i].1 == '\'' {
            i += 1;
            let mut closed = false;
            while i < chars.len() {
                match chars[i].1 {
                    '\\' if i + 1 < chars.len() => {
                        value.push(chars[i + 1].1);
                        i += 2;
                    }
                    '\'' => {
                        closed = true;
                        i += 1;
                        break;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            if !closed {
                push_setting(&mut rest, &connection[start..]);
                break;
            }
        } else {
            while i < chars.len() && !chars[i].1.is_whitespace() {
                match chars[i].1 {
                    '\\' if i + 1 < chars.len() => {
                        value.push(chars[i + 1].1);
                        i += 2;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        }
        let end = chars.get(i).map_or(connection.len(), |c| c.0);
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => push_setting(&mut rest, &connection[start..end]),
        }
    }
    Ok((mode, root, rest))
}

/// Appends one setting (or an unparsed rest) to a key-value string, as a
/// word of its own.
fn push_setting(rest: &mut String, setting: &str) {
    if !rest.is_empty() {
        rest.push(' ');
    }
    rest.push_str(setting);
}

/// tokio-postgres's mode for a connection with these settings.
pub(crate) fn driver_mode(mode: SslMode) -> tokio_postgres::config::SslMode {
    match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `settings`: the roots read from
/// `sslrootcert` (or the system's), checked as the mode says.
pub fn client_config(settings: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = provider();
    let check = match settings.mode {
        SslMode::Disable | SslMode::Prefer => false,
        SslMode::Require => settings.root_cert.is_some(),
        SslMode::VerifyCa | SslMode::VerifyFull => true,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidInput(format!("TLS: {e}")))?;
    let config = if check {
        let roots = Arc::new(roots(settings.root_cert.as_deref())?);
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| Error::InvalidInput(format!("TLS: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = if settings.mode == SslMode::VerifyFull {
            webpki
        } else {
            Arc::new(AnyName(webpki))
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn roots(root_cert: Option<&str>) -> Result<rustls::RootCertStore, Error> {
    let mut store = rustls::RootCertStore::empty();
    match root_cert {
        None | Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = store.add(cert);
            }
            if store.is_empty() {
                return Err(Error::InvalidInput(
                    "TLS: no system root certificates found; name a PEM file in sslrootcert".into(),
                ));
            }
        }
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                Error::InvalidInput(format!("TLS: cannot read sslrootcert {path:?}: {e}"))
            })?;
            use rustls::pki_types::pem::PemObject;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    Error::InvalidInput(format!("TLS: sslrootcert {path:?} is not PEM: {e}"))
                })?;
                store.add(cert).map_err(|e| {
                    Error::InvalidInput(format!(
                        "TLS: sslrootcert {path:?} holds a certificate that is not a CA: {e}"
                    ))
                })?;
            }
            if store.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "TLS: sslrootcert {path:?} holds no certificate"
                )));
            }
        }
    }
    Ok(store)
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not
/// checked (webpki checks the chain before the name).
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root: encrypted, the certificate not
/// checked (libpq's behaviour); the handshake's signatures still are.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// tokio-postgres's TLS connector over rustls.
#[derive(Clone)]
pub struct MakeRustls(Arc<rustls::ClientConfig>);

impl MakeRustls {
    /// A connector with `config`.
    pub fn new(config: Arc<rustls::ClientConfig>) -> MakeRustls {
        MakeRustls(config)
    }
}

impl std::fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MakeRustls")
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TLS: {domain:?} is not a host name or address: {e}"),
            )
        })?;
        Ok(RustlsConnect {
            config: self.0.clone(),
            name,
        })
    }
}

/// One TLS handshake to come.
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            let tls = connector.connect(self.name, stream).await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

/// A connection's TLS stream.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// `tls-server-end-point` (RFC 5929): the hash of the server's
    /// certificate, which ties SCRAM authentication to this TLS session,
    /// so that a relay in between cannot log in as the client.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        let Some(cert) = session.peer_certificates().and_then(|c| c.first()) else {
            return ChannelBinding::none();
        };
        match end_point_digest(cert.as_ref()) {
            Some(algorithm) => ChannelBinding::tls_server_end_point(
                ring::digest::digest(algorithm, cert.as_ref())
                    .as_ref()
                    .to_vec(),
            ),
            None => ChannelBinding::none(),
        }
    }
}

/// The hash `tls-server-end-point` takes of a certificate (RFC 5929,
/// section 4.1): that of its signature algorithm, SHA-256 for MD5 and
/// SHA-1; `None` for algorithms without one named (RSA-PSS, Ed25519) or a
/// certificate that does not parse.
fn end_point_digest(der: &[u8]) -> Option<&'static ring::digest::Algorithm> {
    use ring::digest::{SHA256, SHA384, SHA512};
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, .. }
    let (0x30, certificate, _) = der_tlv(der)? else {
        return None;
    };
    let (_, _, after_tbs) = der_tlv(certificate)?;
    let (0x30, algorithm, _) = der_tlv(after_tbs)? else {
        return None;
    };
    let (0x06, oid, _) = der_tlv(algorithm)? else {
        return None;
    };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    if let Some(n) = oid.strip_prefix(RSA) {
        return match n {
            // md5WithRSA, sha1WithRSA, sha256WithRSA
            [0x04] | [0x05] | [0x0b] => Some(&SHA256),
            [0x0c] => Some(&SHA384),
            [0x0d] => Some(&SHA512),
            _ => None,
        };
    }
    if let Some(n) = oid.strip_prefix(ECDSA) {
        return match n {
            // ecdsa-with-SHA1, ecdsa-with-SHA256
            [0x01] | [0x03, 0x02] => Some(&SHA256),
            [0x03, 0x03] => Some(&SHA384),
            [0x03, 0x04] => Some(&SHA512),
            _ => None,
        };
    }
    None
}

/// One DER element: its tag, its contents and what follows it.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let length = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (length, &rest[n..])
    };
    if rest.len() < length {
        return None;
    }
    Some((tag, &rest[..length], &rest[length..]))
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn both_forms_give_up_their_tls_settings_only() {
        let s =
            split("host=db port=5432 sslmode=verify-full sslrootcert='/etc/my ca.pem' user=app")
                .unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some("/etc/my ca.pem"));
        assert_eq!(s.rest, "host=db port=5432 user=app");
        let s = split(
            "postgresql://app:pw@db:26257/bank?sslmode=verify-ca&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
        assert_eq!(s.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            s.rest,
            "postgresql://app:pw@db:26257/bank?application_name=x"
        );
        let s = split(r"host=db password='it\'s' sslmode=disable").unwrap();
        assert_eq!(s.mode, SslMode::Disable);
        assert_eq!(s.rest, r"host=db password='it\'s'");
        let s = split("host=db").unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        let s = split("postgres://db/bank").unwrap();
        assert_eq!(
            (s.mode, s.rest.as_str()),
            (SslMode::Prefer, "postgres://db/bank")
        );
        assert_eq!(
            split("host = db sslmode = require").unwrap(),
            TlsSettings {
                mode: SslMode::Require,
                root_cert: None,
                rest: "host = db".into()
            }
        );
    }

    #[test]
    fn settings_weaker_than_libpq_s_are_refused_or_raised() {
        // The system's roots: verify-full by default, nothing weaker.
        let s = split("host=db sslrootcert=system").unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        for weak in ["require", "verify-ca", "prefer", "disable"] {
            assert!(
                split(&format!("host=db sslrootcert=system sslmode={weak}")).is_err(),
                "{weak}"
            );
        }
        // verify-ca names its certificate authority.
        assert!(split("host=db sslmode=verify-ca").is_err());
        assert!(split("postgres://db/x?sslmode=verify-ca").is_err());
    }

    #[test]
    fn a_password_may_hold_a_question_mark_and_leftovers_stay_apart() {
        let s = split("postgres://u:pa?sslmode=x@db/bank?sslmode=require").unwrap();
        assert_eq!(s.mode, SslMode::Require);
        assert_eq!(s.rest, "postgres://u:pa?sslmode=x@db/bank");
        let s = split("host=db junk").unwrap();
        assert_eq!(s.rest, "host=db junk");
        let s = split("host=db password='open").unwrap();
        assert_eq!(s.rest, "host=db password='open");
    }

    #[test]
    fn bad_tls_settings_are_typed_errors_without_the_string() {
        for bad in [
            "host=db sslmode=verify_full password=hunter2",
            "postgres://u:hunter2@db/x?sslmode=strict",
            "postgres://u:hunter2@db/x?sslrootcert=%zz",
        ] {
            let e = split(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{bad}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let missing = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some("/no/such/ca.pem".into()),
            rest: String::new(),
        };
        let e = client_config(&missing).unwrap_err();
        assert!(e.to_string().contains("/no/such/ca.pem"), "{e}");
    }

    #[test]
    fn the_end_point_hash_follows_the_certificate_s_signature() {
        // A certificate's skeleton: SEQUENCE { tbs, AlgorithmIdentifier }.
        let cert = |oid: &[u8]| {
            let mut algorithm = vec![0x06, oid.len() as u8];
            algorithm.extend_from_slice(oid);
            let mut body = vec![0x30, 0x03, 0x02, 0x01, 0x00];
            body.extend_from_slice(&[0x30, algorithm.len() as u8]);
            body.extend_from_slice(&algorithm);
            let mut der = vec![0x30, body.len() as u8];
            der.extend_from_slice(&body);
            der
        };
        let rsa = |n: u8| cert(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, n]);
        let name = |der: &[u8]| end_point_digest(der).map(|a| format!("{a:?}"));
        let sha256 = Some(format!("{:?}", ring::digest::SHA256));
        assert_eq!(name(&rsa(0x0b)), sha256);
        assert_eq!(name(&rsa(0x05)), sha256, "SHA-1 binds with SHA-256");
        assert_eq!(
            name(&rsa(0x0c)),
            Some(format!("{:?}", ring::digest::SHA384))
        );
        assert_eq!(name(&rsa(0x0a)), None, "RSA-PSS names no hash here");
        assert_eq!(
            name(&cert(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02])),
            sha256
        );
        assert_eq!(name(&cert(&[0x2b, 0x65, 0x70])), None, "Ed25519");
        assert_eq!(name(&[0x30, 0x82, 0xff]), None);
    }

    proptest! {
        #[test]
        fn any_certificate_bytes_are_judged_without_panicking(der in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = end_point_digest(&der);
        }

        #[test]
        fn any_connection_string_splits_without_panicking(text in ".{0,80}") {
            let _ = split(&text);
        }

        #[test]
        fn settings_other_than_tls_pass_through_untouched(
            pairs in proptest::collection::vec(("[a-z_]{1,10}", "[A-Za-z0-9./:@-]{0,12}"), 0..6),
            mode in prop_oneof![Just("disable"), Just("prefer"), Just("require"), Just("verify-ca"), Just("verify-full")],
        ) {
            let pairs: Vec<_> = pairs
                .into_iter()
                .filter(|(k, _)| k != "sslmode" && k != "sslrootcert")
                .map(|(k, v)| format!("{k}='{v}'"))
                .collect();
            let text = format!("{} sslmode={mode} sslrootcert=/etc/ca.pem", pairs.join(" "));
            let s = split(&text).unwrap();
            prop_assert_eq!(s.mode, SslMode::parse(mode).unwrap());
            prop_assert_eq!(s.rest, pairs.join(" "));
        }
    }
}
