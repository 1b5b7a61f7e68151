//! Registration's proof of identity: the signed instance identity
//! document, checked against the certificates of `identity_ca`.
//!
//! With `identity = "verify"` (the default) a registration carries the
//! document and its `rsa2048` signature as IMDS served them; the instance
//! id, type, zone and region the agent is registered with come from the
//! signed document, never from the request, and `allowed_accounts` refuses
//! instances of other accounts. So an enrollment token alone no longer
//! lets a process register as another instance (it would need that
//! instance's document, which only that instance's IMDS serves). With
//! `identity = "trust"` the request's word is taken, as before: for
//! simulators and metadata mocks that cannot sign; it is logged at start,
//! shown on `/healthz` and by `validate`.
//!
//! The RSA check is aws-lc-rs's, through rustls's provider (already
//! linked for TLS); the PKCS#7 reading is `spot_common::identity`'s.

use crate::config::{Config, IdentityMode};
use anyhow::{Context, Result, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use spot_common::identity::{self, Document, IdentityError, Signer};
use spot_common::wire::IdentityProof;

/// The registration check the coordinator runs.
#[derive(Debug)]
pub struct IdentityCheck {
    mode: IdentityMode,
    signers: Vec<Signer>,
    allowed_accounts: Vec<String>,
}

/// Why a registration's identity was refused: a stable code and what to
/// do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl IdentityCheck {
    /// From the configuration: in verify mode the bundle must hold at
    /// least one RSA certificate, or the start stops here with what to do.
    pub fn load(config: &Config) -> Result<IdentityCheck> {
        let mut signers = Vec::new();
        if let Some(path) = &config.identity_ca {
            let certs = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading identity_ca {}", path.display()))?;
            for (i, cert) in certs.enumerate() {
                let cert = cert.with_context(|| format!("identity_ca {}", path.display()))?;
                let signer = Signer::from_certificate(&cert).with_context(|| {
                    format!("identity_ca {}: certificate {}", path.display(), i + 1)
                })?;
                signers.push(signer);
            }
        }
        if config.identity == IdentityMode::Verify && signers.is_empty() {
            bail!(
                "identity = \"verify\" needs the certificates that sign instance identity \
                 documents: put AWS's RSA-2048 certificates of your regions in a PEM file and \
                 set identity_ca to it (docs/OPERATIONS.md, \"Identity check\"); or set \
                 identity = \"trust\" to take each registration's word for its instance"
            );
        }
        Ok(IdentityCheck {
            mode: config.identity,
            signers,
            allowed_accounts: config.allowed_accounts.clone(),
        })
    }

    pub fn mode(&self) -> IdentityMode {
        self.mode
    }

    /// How many signing certificates the bundle holds.
    pub fn signers(&self) -> usize {
        self.signers.len()
    }

    /// The verified document of a registration; `None` in trust mode.
    pub fn check(&self, proof: Option<&IdentityProof>) -> Result<Option<Document>, Refusal> {
        if self.mode == IdentityMode::Trust {
            return Ok(None);
        }
        let Some(proof) = proof else {
            return Err(Refusal {
                code: "identity_required",
                message: "this coordinator verifies instance identity (identity = \"verify\"): \
                          a registration carries the instance identity document and its \
                          rsa2048 signature from IMDS (an agent older than this release, or \
                          one whose IMDS serves no signature, cannot register)"
                    .into(),
            });
        };
        let refuse = |e: IdentityError| Refusal {
            code: "identity_invalid",
            message: format!("the instance identity document does not verify: {e}"),
        };
        let pkcs7 = identity::base64_decode(&proof.rsa2048).map_err(refuse)?;
        let doc = identity::verify(&pkcs7, Some(&proof.document), &self.signers, rsa_sha256)
            .map_err(refuse)?;
        if !self.allowed_accounts.is_empty() && !self.allowed_accounts.contains(&doc.account_id) {
            return Err(Refusal {
                code: "account_not_allowed",
                message: format!(
                    "instance {} belongs to account {}, which allowed_accounts does not list",
                    doc.instance_id, doc.account_id
                ),
            });
        }
        Ok(Some(doc))
    }
}

/// RSASSA-PKCS1-v1_5 with SHA-256, keys of 2048 bits and more.
fn rsa_sha256(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let algorithms =
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == rustls::SignatureScheme::RSA_PKCS1_SHA256)
        .and_then(|(_, algs)| algs.first())
        .is_some_and(|alg| alg.verify_signature(public_key, message, signature).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/identity"
        ))
        .join(name)
    }

    fn check(mode: IdentityMode, accounts: &[&str]) -> IdentityCheck {
        IdentityCheck::load(&Config {
            identity: mode,
            identity_ca: Some(fixture("test-ca.pem")),
            allowed_accounts: accounts.iter().map(|s| (*s).to_owned()).collect(),
            ..Config::default()
        })
        .unwrap()
    }

    fn proof(p7: &str) -> IdentityProof {
        IdentityProof {
            document: std::fs::read_to_string(fixture("document.json")).unwrap(),
            rsa2048: identity::base64_encode(&std::fs::read(fixture(p7)).unwrap()),
        }
    }

    /// The real RSA check over OpenSSL's signatures: what a real IMDS
    /// serves verifies, a stranger's signature and a changed document do
    /// not, and the account list is applied.
    #[test]
    fn openssl_signed_documents_verify_and_forgeries_do_not() {
        let c = check(IdentityMode::Verify, &[]);
        for p7 in ["document.p7", "document-stream.p7"] {
            let doc = c.check(Some(&proof(p7))).unwrap().unwrap();
            assert_eq!(doc.instance_id, "i-0fixture0000000001");
            assert_eq!(doc.availability_zone, "us-east-1a");
        }
        let refused = |p: IdentityProof| c.check(Some(&p)).unwrap_err().code;
        assert_eq!(refused(proof("stranger.p7")), "identity_invalid");
        let mut edited = proof("document.p7");
        edited.document = edited.document.replace("m5.large", "m5.small");
        assert_eq!(refused(edited), "identity_invalid");
        // One flipped bit of the signature itself.
        let mut raw = std::fs::read(fixture("document.p7")).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let mut flipped = proof("document.p7");
        flipped.rsa2048 = identity::base64_encode(&raw);
        assert_eq!(refused(flipped), "identity_invalid");
        assert_eq!(c.check(None).unwrap_err().code, "identity_required");

        let other = check(IdentityMode::Verify, &["210987654321"]);
        assert_eq!(
            other.check(Some(&proof("document.p7"))).unwrap_err().code,
            "account_not_allowed"
        );
        let ours = check(IdentityMode::Verify, &["210987654321", "123456789012"]);
        assert!(ours.check(Some(&proof("document.p7"))).is_ok());
        assert_eq!(check(IdentityMode::Trust, &[]).check(None), Ok(None));
    }

    #[test]
    fn verify_without_certificates_stops_the_start_with_what_to_do() {
        let e = IdentityCheck::load(&Config::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("identity_ca") && e.contains("trust"), "{e}");
        let trust = Config {
            identity: IdentityMode::Trust,
            ..Config::default()
        };
        assert_eq!(IdentityCheck::load(&trust).unwrap().signers(), 0);
        let bad = Config {
            identity_ca: Some(fixture("document.json")),
            ..Config::default()
        };
        assert!(IdentityCheck::load(&bad).is_err());
    }
}
