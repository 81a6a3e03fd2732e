//! STARTTLS/SMTPS with rustls (docs/qmail-remote-tls.md §1-§3): which hosts get TLS and how
//! strictly (tlshosts, notlshosts, exhaustivelist), the client configuration
//! (tlsclientciphers, clientcert.pem, no SNI), the encrypted stream with qmail's per-operation
//! timeouts, and the TLS patch's post-handshake verification (CA file, then names).

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use socket2::Socket;

use super::cert;
use super::connect::{self, Conn};
use super::control;

/// How TLS applies to one host (docs/qmail-remote-tls.md §1.2 step 5a, §3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// notlshosts/<name> or exhaustivelist: plaintext even if STARTTLS is offered.
    Off,
    /// STARTTLS if offered, certificate not checked.
    Opportunistic,
    /// tlshosts/<name>.pem exists: TLS required, verified against that file.
    Required {
        /// `control/tlshosts/<name>.pem`, as printed in reports.
        file: String,
        /// The host name the certificate must carry.
        name: Vec<u8>,
    },
}

/// A TLS control file exists but cannot be examined or read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

fn exists(p: &Path) -> Result<bool, FileError> {
    match std::fs::metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        // an unreadable tlshosts/ must not silently turn verification off
        Err(source) => Err(FileError {
            path: p.to_path_buf(),
            source,
        }),
    }
}

/// A DNS answer or route must not steer the file lookup out of the directory.
fn usable_name(name: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(name).ok()?;
    (!s.is_empty() && !s.starts_with('.') && !s.contains('/')).then_some(s)
}

/// The policy for a host called `name` (`None` for IP literals: opportunistic, never checked),
/// reading relative to `base` (the qmail home).
pub fn policy(base: &Path, name: Option<&[u8]>) -> Result<Policy, FileError> {
    let Some(name) = name else {
        return Ok(Policy::Opportunistic);
    };
    if let Some(n) = usable_name(name) {
        let file = format!("control/tlshosts/{n}.pem");
        if exists(&base.join(&file))? {
            return Ok(Policy::Required {
                file,
                name: name.to_vec(),
            });
        }
    }
    if exists(&base.join("control/tlshosts/exhaustivelist"))? {
        return Ok(Policy::Off);
    }
    if let Some(n) = usable_name(name)
        && exists(&base.join(format!("control/notlshosts/{n}")))?
    {
        return Ok(Policy::Off);
    }
    Ok(Policy::Opportunistic)
}

/// The client configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// control/tlsclientciphers names something we do not have (report T3).
    #[error("{0}")]
    Ciphers(String),
    /// The CA file is unusable (report T4).
    #[error("{0}")]
    CaFile(String),
    /// A control file could not be read (temp_control).
    #[error("cannot read {0}")]
    Unreadable(&'static str),
}

/// The suites of control/tlsclientciphers (docs/qmail-remote-tls.md §2.2).
fn cipher_suites(
    base: &Path,
    all: &[rustls::SupportedCipherSuite],
) -> Result<Vec<rustls::SupportedCipherSuite>, SetupError> {
    let lines = control::read_lines(base, "control/tlsclientciphers")
        .map_err(|_| SetupError::Unreadable("control/tlsclientciphers"))?
        .unwrap_or_default();
    let joined = lines.join(&b':');
    let mut out: Vec<rustls::SupportedCipherSuite> = Vec::new();
    for name in joined.split(|&b| b == b':').filter(|n| !n.is_empty()) {
        let upper = name.to_ascii_uppercase();
        if matches!(upper.as_slice(), b"DEFAULT" | b"ALL" | b"HIGH") {
            for s in all {
                if !out.contains(s) {
                    out.push(*s);
                }
            }
            continue;
        }
        let found = all
            .iter()
            .find(|s| openssl_name(s.suite()).is_some_and(|o| o.as_bytes() == name));
        match found {
            Some(s) if !out.contains(s) => out.push(*s),
            Some(_) => {}
            None => {
                return Err(SetupError::Ciphers(format!(
                    "unknown cipher {} in control/tlsclientciphers",
                    String::from_utf8_lossy(name)
                )));
            }
        }
    }
    if out.is_empty() {
        out = all.to_vec();
    }
    Ok(out)
}

/// OpenSSL's name of a suite rustls implements.
fn openssl_name(s: rustls::CipherSuite) -> Option<&'static str> {
    use rustls::CipherSuite as C;
    Some(match s {
        C::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        C::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}

/// The trust anchors of a tlshosts/<name>.pem, kept as DER.
pub struct CaFile {
    certs: Vec<CertificateDer<'static>>,
}

fn load_ca(base: &Path, file: &str) -> Result<CaFile, SetupError> {
    let bytes = std::fs::read(base.join(file)).map_err(|e| SetupError::CaFile(e.to_string()))?;
    let mut certs = Vec::new();
    for c in CertificateDer::pem_slice_iter(&bytes) {
        let c = c.map_err(|e| SetupError::CaFile(format!("{e:?}")))?;
        webpki::anchor_from_trusted_cert(&c)
            .map_err(|e| SetupError::CaFile(format!("bad certificate: {e}")))?;
        certs.push(c);
    }
    if certs.is_empty() {
        return Err(SetupError::CaFile("no certificate found".into()));
    }
    Ok(CaFile { certs })
}

/// control/clientcert.pem: chain and key in one file, any order; any problem means "no client
/// certificate" (as the patch).
fn client_cert(base: &Path) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let bytes = std::fs::read(base.join("control/clientcert.pem")).ok()?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(&bytes).ok()?;
    (!certs.is_empty()).then_some((certs, key))
}

/// Accepts every certificate during the handshake (the patch verifies afterwards, to report
/// why), but still checks the server's handshake signature with the certificate's key.
#[derive(Debug)]
struct AfterHandshake {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AfterHandshake {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Everything one TLS session needs.
pub struct Setup {
    config: Arc<ClientConfig>,
    ca: Option<CaFile>,
    algs: WebPkiSupportedAlgorithms,
}

/// Builds the client configuration for `policy` (not `Off`), reading relative to `base`.
pub fn setup(base: &Path, policy: &Policy) -> Result<Setup, SetupError> {
    let ring = rustls::crypto::ring::default_provider();
    let suites = cipher_suites(base, &ring.cipher_suites)?;
    let ca = match policy {
        Policy::Required { file, .. } => Some(load_ca(base, file)?),
        _ => None,
    };
    let algs = ring.signature_verification_algorithms;
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if suites.iter().any(|s| s.tls13().is_some()) {
        versions.push(&rustls::version::TLS13);
    }
    if suites.iter().any(|s| s.tls13().is_none()) {
        versions.push(&rustls::version::TLS12);
    }
    let provider = CryptoProvider {
        cipher_suites: suites,
        ..ring
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .map_err(|e| SetupError::Ciphers(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AfterHandshake { algs }));
    let mut config = match client_cert(base) {
        Some((chain, key)) => match builder.clone().with_client_auth_cert(chain, key) {
            Ok(c) => c,
            Err(_) => builder.with_no_client_auth(),
        },
        None => builder.with_no_client_auth(),
    };
    // no SNI, as the patch, Postfix and Exim for MX delivery
    config.enable_sni = false;
    Ok(Setup {
        config: Arc::new(config),
        ca,
        algs,
    })
}

/// Why the handshake failed: `<err>` of report T6.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// timeoutremote passed.
    #[error("timed out")]
    Timeout,
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Eof,
    /// A socket error.
    #[error("{}", connect::error_str(.0))]
    Io(io::Error),
    /// A TLS protocol error.
    #[error("{0}")]
    Tls(rustls::Error),
}

/// A TLS session over a connected socket, with stock's per-operation timeouts.
pub struct TlsConn {
    fd: Socket,
    timeout_ms: i32,
    tls: ClientConnection,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

/// The socket as rustls sees it: non-blocking reads and writes; MSG_NOSIGNAL, so a closed peer
/// is an error, never a SIGPIPE. Vectored writes put several queued records in one send.
struct Sock<'a>(&'a Socket);

impl Read for Sock<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        let mut s: &Socket = self.0;
        s.read(b)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.send_with_flags(b, libc::MSG_NOSIGNAL)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

impl TlsConn {
    /// Starts TLS on `conn` (bytes the server sent before, e.g. after its 220 to STARTTLS, are
    /// discarded: they were not protected) and runs the handshake, bounded as a whole by the
    /// connection's timeout.
    pub fn handshake(
        conn: Conn,
        setup: &Setup,
        ip: std::net::IpAddr,
    ) -> Result<Self, HandshakeError> {
        let (fd, timeout_ms) = conn.into_parts();
        let tls =
            match ClientConnection::new(setup.config.clone(), ServerName::IpAddress(ip.into())) {
                Ok(t) => t,
                Err(e) => return Err(HandshakeError::Tls(e)),
            };
        let mut t = TlsConn {
            fd,
            timeout_ms,
            tls,
            buf: vec![0; 4096],
            pos: 0,
            len: 0,
        };
        let start = Instant::now();
        let left = |start: Instant| -> i32 {
            if timeout_ms <= 0 {
                return 0;
            }
            let spent = start.elapsed().as_millis().min(i32::MAX as u128) as i32;
            timeout_ms.saturating_sub(spent).max(0)
        };
        while t.tls.is_handshaking() {
            t.flush_with(left(start))?;
            if !t.tls.is_handshaking() {
                break;
            }
            if t.tls.wants_read() {
                match t.read_tls(left(start)) {
                    Ok(()) => {}
                    Err(e) => {
                        let _ = t.flush_with(0);
                        return Err(e);
                    }
                }
            }
        }
        t.flush_with(left(start))?;
        Ok(t)
    }

    /// Waits for and processes TLS records.
    fn read_tls(&mut self, timeout_ms: i32) -> Result<(), HandshakeError> {
        loop {
            match connect::wait(self.fd.as_raw_fd(), libc::POLLIN, timeout_ms) {
                Ok(true) => {}
                Ok(false) => return Err(HandshakeError::Timeout),
                Err(e) => return Err(HandshakeError::Io(e)),
            }
            match self.tls.read_tls(&mut Sock(&self.fd)) {
                Ok(0) => return Err(HandshakeError::Eof),
                Ok(_) => {
                    return self
                        .tls
                        .process_new_packets()
                        .map(|_| ())
                        .map_err(HandshakeError::Tls);
                }
                Err(e) if retry(&e) => {}
                Err(e) => return Err(HandshakeError::Io(e)),
            }
        }
    }

    /// Writes all pending TLS records.
    fn flush_with(&mut self, timeout_ms: i32) -> Result<(), HandshakeError> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut Sock(&self.fd)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match connect::wait(self.fd.as_raw_fd(), libc::POLLOUT, timeout_ms) {
                        Ok(true) => {}
                        Ok(false) => return Err(HandshakeError::Timeout),
                        Err(e) => return Err(HandshakeError::Io(e)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HandshakeError::Io(e)),
            }
        }
        Ok(())
    }

    fn io_err(e: HandshakeError) -> io::Error {
        match e {
            HandshakeError::Timeout => io::ErrorKind::TimedOut.into(),
            HandshakeError::Eof => io::ErrorKind::UnexpectedEof.into(),
            HandshakeError::Io(e) => e,
            HandshakeError::Tls(e) => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }

    /// Next plaintext byte. EOF (also close_notify), errors and timeouts are errors.
    pub fn byte(&mut self) -> io::Result<u8> {
        while self.pos == self.len {
            match self.tls.reader().read(&mut self.buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.pos = 0;
                    self.len = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.read_tls(self.timeout_ms).map_err(Self::io_err)?;
                    // alerts or key updates may need an answer
                    self.flush_with(self.timeout_ms).map_err(Self::io_err)?;
                }
                Err(e) => return Err(e),
            }
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }

    /// Encrypts and sends everything.
    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.tls.writer().write(data)?;
            data = &data[n..];
            self.flush_with(self.timeout_ms).map_err(Self::io_err)?;
        }
        Ok(())
    }

    /// See `Conn::peer_gone`.
    pub fn peer_gone(&self) -> bool {
        connect::hung_up(self.fd.as_raw_fd())
    }

    /// QUIT and close_notify in one non-blocking attempt, result ignored.
    pub fn quit(&mut self) {
        let _ = self.tls.writer().write(b"QUIT\r\n");
        self.tls.send_close_notify();
        let _ = self.flush_with(0);
    }

    /// The server's certificates (leaf first), if any.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.tls.peer_certificates()
    }

    /// Protocol version and suite, for logs and tests.
    pub fn describe(&self) -> String {
        format!(
            "{:?} {:?}",
            self.tls.protocol_version(),
            self.tls.negotiated_cipher_suite().map(|s| s.suite())
        )
    }
}

/// A verification failure after the handshake (docs/qmail-remote-tls.md §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// T8.
    NoCertificate,
    /// T7, with OpenSSL's words where they exist.
    Chain(String),
    /// T9.
    NoCommonName,
    /// T10: the CN received.
    WrongCommonName(Vec<u8>),
    /// T11.
    NoMatchingDnsName,
}

/// The TLS patch's checks, in its order, for a session under `Policy::Required`.
pub fn verify(
    setup: &Setup,
    certs: Option<&[CertificateDer<'static>]>,
    name: &[u8],
    now: UnixTime,
) -> Result<(), VerifyError> {
    let Some(ca) = &setup.ca else {
        return Ok(());
    };
    let Some((leaf, intermediates)) = certs.and_then(|c| c.split_first()) else {
        return Err(VerifyError::NoCertificate);
    };
    let info = cert::parse(leaf.as_ref());
    chain(setup, ca, leaf, intermediates, info.as_ref(), now)?;
    let info = info.ok_or_else(|| VerifyError::Chain("certificate cannot be parsed".into()))?;
    if !info.dns_names.is_empty() {
        if info.dns_names.iter().any(|d| cert::name_matches(d, name)) {
            return Ok(());
        }
        return Err(VerifyError::NoMatchingDnsName);
    }
    match info.common_name {
        None => Err(VerifyError::NoCommonName),
        Some(cn) if cn.is_empty() => Err(VerifyError::NoCommonName),
        Some(cn) if cert::name_matches(&cn, name) => Ok(()),
        Some(cn) => Err(VerifyError::WrongCommonName(cn)),
    }
}

fn chain(
    setup: &Setup,
    ca: &CaFile,
    leaf: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
    info: Option<&cert::CertInfo>,
    now: UnixTime,
) -> Result<(), VerifyError> {
    let secs = now.as_secs() as i64;
    let dates = |i: &cert::CertInfo| {
        if secs < i.validity.0 {
            Err(VerifyError::Chain("certificate is not yet valid".into()))
        } else if secs > i.validity.1 {
            Err(VerifyError::Chain("certificate has expired".into()))
        } else {
            Ok(())
        }
    };
    // the server's own certificate listed in the file (self-signed included) is trusted as is
    if ca.certs.iter().any(|c| c.as_ref() == leaf.as_ref()) {
        return match info {
            Some(i) => dates(i),
            None => Err(VerifyError::Chain("certificate cannot be parsed".into())),
        };
    }
    let anchors: Vec<_> = ca
        .certs
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect();
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| VerifyError::Chain(format!("bad certificate: {e}")))?;
    match ee.verify_for_usage(
        setup.algs.all,
        &anchors,
        intermediates,
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    ) {
        Ok(_) => Ok(()),
        Err(e) => Err(VerifyError::Chain(openssl_words(&e, info))),
    }
}

/// The verify-result text OpenSSL gives for the usual failures, so logs and bounces read as
/// they did with the patch; rustls' words otherwise.
fn openssl_words(e: &webpki::Error, info: Option<&cert::CertInfo>) -> String {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer if info.is_some_and(|i| i.self_issued) => "self-signed certificate".into(),
        E::UnknownIssuer => "unable to get local issuer certificate".into(),
        E::CertExpired { .. } => "certificate has expired".into(),
        E::CertNotValidYet { .. } => "certificate is not yet valid".into(),
        other => format!("{other}"),
    }
}
