//! HTTPS and WSS (rustls): a certificate and key from PEM files (`server.tls_cert`,
//! `server.tls_key`), or a self-signed certificate made at start (`--self-signed`) for a LAN
//! demo, since browsers give `getUserMedia` only to secure origins.

use ring::digest;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

/// A server TLS configuration and what identifies its certificate.
pub struct Tls {
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the leaf certificate, `AA:BB:…` (what a browser shows).
    pub fingerprint: String,
    /// base64 SHA-256 of the leaf's public key (Chromium's `--ignore-certificate-errors-spki-list`).
    pub spki_sha256: String,
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Tls> {
    let leaf = chain
        .first()
        .ok_or_else(|| anyhow::anyhow!("the certificate file holds no certificate"))?;
    let fingerprint = digest::digest(&digest::SHA256, leaf.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let spki = spki_of(leaf.as_ref()).unwrap_or_default();
    let spki_sha256 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(digest::digest(&digest::SHA256, &spki).as_ref())
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("the certificate and key do not make a TLS server: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        config: Arc::new(config),
        fingerprint,
        spki_sha256,
    })
}

/// The SubjectPublicKeyInfo of a DER certificate (its seventh TBS field, after the optional
/// version): enough DER walking to pin the key.
fn spki_of(cert: &[u8]) -> Option<Vec<u8>> {
    // (tag, header length, content length) of the element at the start of `d`.
    fn element(d: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *d.first()?;
        let first = *d.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, 2, first));
        }
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *d.get(2 + i)? as usize;
        }
        Some((tag, 2 + n, len))
    }
    let (_, h, _) = element(cert)?; // Certificate SEQUENCE
    let tbs = cert.get(h..)?;
    let (_, th, tlen) = element(tbs)?; // TBSCertificate SEQUENCE
    let mut rest = tbs.get(th..th + tlen)?;
    let mut index = 0;
    loop {
        let (tag, eh, elen) = element(rest)?;
        let whole = rest.get(..eh + elen)?;
        // [0] version is optional; then serial, signature, issuer, validity, subject, SPKI.
        if tag != 0xa0 {
            index += 1;
            if index == 6 {
                return Some(whole.to_vec());
            }
        }
        rest = rest.get(eh + elen..)?;
    }
}

/// Reads a PEM certificate chain and private key.
pub fn from_files(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("{}: not a PEM private key: {e}", key.display()))?;
    server_config(chain, key)
}

/// A self-signed certificate for `localhost`, the bound address and `extra` names, valid for
/// a year from now; also returns its PEM (to hand to a browser or a client).
pub fn self_signed(host: IpAddr, extra: &[String]) -> anyhow::Result<(Tls, String)> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if !host.is_unspecified() {
        names.push(host.to_string());
    }
    names.extend(extra.iter().cloned());
    names.dedup();
    let cert = rcgen::generate_simple_self_signed(names)?;
    let pem = cert.cert.pem();
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("self-signed key: {e}"))?;
    let tls = server_config(vec![cert.cert.der().clone()], key)?;
    Ok((tls, pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_makes_a_server_and_its_key_is_pinned() {
        let (tls, pem) = self_signed("127.0.0.1".parse().unwrap(), &["mixdown.lan".into()])
            .expect("self-signed");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(tls.fingerprint.split(':').count(), 32);
        // The SPKI found by walking the DER is the key rcgen generated.
        let cert = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let spki = spki_of(cert.as_ref()).expect("SPKI");
        assert_eq!(spki[0], 0x30, "a SEQUENCE");
        assert!(spki.len() > 60 && spki.len() < 600, "{}", spki.len());
        assert_eq!(tls.spki_sha256.len(), 44);
    }

    #[test]
    fn unreadable_files_say_which() {
        let e = from_files(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("/nonexistent/c.pem"), "{e}");
    }
}
