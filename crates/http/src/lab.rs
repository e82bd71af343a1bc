//! Lab mode (`tls = "lab"`): the server is its own certificate authority. At first start it
//! makes a CA (kept in `state_dir/tls/`, so the fingerprint operators enrolled stays the same
//! across restarts) and a server certificate signed by it for the names and addresses
//! clients use; the CA certificate is served on the boot listener (`/ca.crt`, `/ca.der`) for
//! enrolment in firmware or for building into iPXE. The server certificate names a CRL there
//! too (`/ca.crl`, signed by the CA, nothing revoked): clients that check revocation find
//! an answer instead of treating the certificate as unverifiable.
//!
//! Keys are RSA 2048: iPXE builds older than its ECDSA support and many UEFI firmwares verify
//! RSA signatures only.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::tls::{fingerprint, load_pair, TlsError, TlsFiles};

/// How long the lab CA is valid: long, since re-enrolling firmware is manual work.
const CA_DAYS: i64 = 3650;
/// How long a server certificate is valid (the longest clients commonly accept).
const SERVER_DAYS: i64 = 397;
/// A server certificate this close to its end is replaced at start.
const RENEW_DAYS: i64 = 30;

/// The lab CA and the server certificate it signed.
#[derive(Debug, Clone)]
pub struct Lab {
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    /// SHA-256 of the CA certificate, lowercase hex.
    pub ca_sha256: String,
    /// The CA certificate's file (what `--ca` takes).
    pub ca_file: PathBuf,
    /// The server certificate (chain: server, CA) and its key.
    pub server: TlsFiles,
    /// The CA's certificate revocation list (DER), made at each start.
    pub crl_der: Vec<u8>,
}

fn fail<T>(what: &str, e: impl std::fmt::Display) -> Result<T, TlsError> {
    Err(TlsError(format!("lab TLS: {what}: {e}")))
}

/// Makes (or reuses) the CA and a server certificate for `names` (DNS names or IP addresses)
/// under `dir`, naming `crl_url` as where its CA's revocation list is. The server certificate
/// is issued again when the names or the URL changed, it is near its end, or it no longer
/// loads.
pub fn ensure(dir: &Path, names: &[String], crl_url: &str) -> Result<Lab, TlsError> {
    std::fs::create_dir_all(dir).or_else(|e| fail(&dir.display().to_string(), e))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let ca_key_file = dir.join("ca.key");
    let ca_file = dir.join("ca.crt");
    let ca_key = match std::fs::read_to_string(&ca_key_file) {
        Ok(pem) => {
            KeyPair::from_pem(&pem).or_else(|e| fail(&ca_key_file.display().to_string(), e))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = new_rsa_key()?;
            write_file(&ca_key_file, key.serialize_pem().as_bytes(), 0o600)?;
            key
        }
        Err(e) => return fail(&ca_key_file.display().to_string(), e),
    };
    let ca_params = ca_params(&ca_key)?;
    let ca = ca_params
        .self_signed(&ca_key)
        .or_else(|e| fail("CA certificate", e))?;
    // The CA certificate on disk is kept while it stays valid: a new one (new dates) would
    // still verify the same chains, but operators compare the fingerprint they enrolled.
    let (ca_der, ca_pem) = match read_cert(&ca_file) {
        Some((der, pem)) if ca_still_valid(&der) => (der, pem),
        _ => {
            write_file(&ca_file, ca.pem().as_bytes(), 0o644)?;
            (ca.der().to_vec(), ca.pem())
        }
    };
    let server = TlsFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    if !server_current(&server, names, crl_url, &ca_der) {
        let key = new_rsa_key()?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).or_else(|e| fail("names", e))?;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(
                    n.clone()
                        .try_into()
                        .or_else(|e| fail(&format!("name {n:?}"), e))?,
                )),
            })
            .collect::<Result<_, TlsError>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "chainboot");
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![crl_url.to_string()],
        }];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(SERVER_DAYS);
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .or_else(|e| fail("server certificate", e))?;
        write_file(&server.key, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(
            &server.cert,
            format!("{}{ca_pem}", cert.pem()).as_bytes(),
            0o644,
        )?;
        load_pair(&server)?;
    }
    let now = time::OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(CA_DAYS),
        crl_number: random_serial(),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca, &ca_key)
    .or_else(|e| fail("CRL", e))?;
    Ok(Lab {
        crl_der: crl.der().to_vec(),
        ca_pem,
        ca_sha256: fingerprint(&ca_der),
        ca_der,
        ca_file,
        server,
    })
}

/// The CA's parameters, the same on every start for the same key: signing with them yields
/// certificates that chain to the CA certificate written at first start.
fn ca_params(key: &KeyPair) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).or_else(|e| fail("CA", e))?;
    let id = fingerprint(&key.public_key_der());
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "chainboot");
    dn.push(DnType::CommonName, format!("chainboot lab CA {}", &id[..8]));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(CA_DAYS);
    params.serial_number = Some(random_serial());
    Ok(params)
}

fn random_serial() -> rcgen::SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, as DER INTEGER serials should be.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    rcgen::SerialNumber::from_slice(&bytes)
}

fn new_rsa_key() -> Result<KeyPair, TlsError> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
        .or_else(|e| fail("RSA key", e))?;
    let der = key.to_pkcs8_der().or_else(|e| fail("RSA key", e))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.as_bytes().to_vec()));
    KeyPair::from_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256).or_else(|e| fail("RSA key", e))
}

/// The first certificate of a PEM file: its DER and the file's text.
fn read_cert(path: &Path) -> Option<(Vec<u8>, String)> {
    let pem = std::fs::read_to_string(path).ok()?;
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    Some((der.to_vec(), pem))
}

fn days_left(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Some((cert.validity().not_after.timestamp() - now) / 86_400)
}

fn ca_still_valid(der: &[u8]) -> bool {
    days_left(der).is_some_and(|d| d > RENEW_DAYS)
}

/// The server certificate loads, is for exactly `names`, names `crl_url`, is signed by the
/// CA on disk and has more than a month left.
fn server_current(files: &TlsFiles, names: &[String], crl_url: &str, ca_der: &[u8]) -> bool {
    let Ok((pair, _)) = load_pair(files) else {
        return false;
    };
    let [leaf, ca] = pair.cert.as_slice() else {
        return false;
    };
    if ca.as_ref() != ca_der || days_left(leaf).is_none_or(|d| d <= RENEW_DAYS) {
        return false;
    }
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
    if crl_urls(&cert) != [crl_url] {
        return false;
    }
    let mut have = crate::tls::alt_names(&cert);
    let mut want: Vec<String> = names
        .iter()
        .map(|n| {
            n.parse::<IpAddr>()
                .map_or_else(|_| n.clone(), |ip| ip.to_string())
        })
        .collect();
    have.sort();
    want.sort();
    want.dedup();
    have == want
}

fn crl_urls(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
            for p in points.iter() {
                if let Some(DistributionPointName::FullName(names)) = &p.distribution_point {
                    for n in names {
                        if let GeneralName::URI(u) = n {
                            out.push(u.to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a reader (the
/// file watcher) never sees half a file; the mode is set before any byte is written.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.or_else(|e| fail(&path.display().to_string(), e))
}

/// `GET /ca.crt` (PEM) and `GET /ca.der` (DER): the lab CA certificate, for enrolment;
/// `GET /ca.crl`: its revocation list.
pub fn ca_routes(lab: &Lab) -> Router {
    let pem = lab.ca_pem.clone();
    let der = bytes::Bytes::from(lab.ca_der.clone());
    let crl = bytes::Bytes::from(lab.crl_der.clone());
    Router::new()
        .route(
            "/ca.crl",
            get(move || {
                let crl = crl.clone();
                async move {
                    ([(http::header::CONTENT_TYPE, "application/pkix-crl")], crl).into_response()
                }
            }),
        )
        .route(
            "/ca.crt",
            get(move || {
                let pem = pem.clone();
                async move {
                    (
                        [(http::header::CONTENT_TYPE, "application/x-pem-file")],
                        pem,
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/ca.der",
            get(move || {
                let der = der.clone();
                async move {
                    (
                        [(http::header::CONTENT_TYPE, "application/x-x509-ca-cert")],
                        der,
                    )
                        .into_response()
                }
            }),
        )
}
