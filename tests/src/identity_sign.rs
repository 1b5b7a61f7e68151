//! The test key that signs instance identity documents, as AWS's regional
//! keys sign real ones: the IMDS simulator serves documents signed with it,
//! coordinators under test trust its certificate (`identity_ca`), and raw
//! tests sign (or forge) registrations with it.
//!
//! The key and its self-signed certificate are fixtures
//! (`tests/fixtures/identity/`); they sign nothing outside the tests.

use anyhow::{Context, Result};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use spot_common::identity::{self, Signer};
use spot_common::wire::IdentityProof;
use std::path::{Path, PathBuf};

/// The certificate coordinators under test verify against (PEM).
pub const TEST_CA_PEM: &str = include_str!("../fixtures/identity/test-ca.pem");
const TEST_KEY_PKCS8: &[u8] = include_bytes!("../fixtures/identity/test-key.pk8");

/// The account every simulated instance belongs to.
pub const ACCOUNT_ID: &str = "123456789012";

/// Any document, signed under the test key (a forger with the key could
/// sign anything; the coordinator's other checks must still hold).
pub fn proof_of(document: String) -> Result<IdentityProof> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(TEST_KEY_PKCS8.to_vec()));
    let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .context("loading the fixture key")?;
    let rsa = key
        .choose_scheme(&[rustls::SignatureScheme::RSA_PKCS1_SHA256])
        .context("the fixture key does not sign PKCS#1 SHA-256")?;
    let mut failed = None;
    let signature = identity::sign(document.as_bytes(), &signer()?, |message| {
        rsa.sign(message).unwrap_or_else(|e| {
            failed = Some(e);
            Vec::new()
        })
    });
    if let Some(e) = failed {
        return Err(e).context("signing with the fixture key");
    }
    Ok(IdentityProof {
        document,
        rsa2048: identity::base64_encode(&signature),
    })
}

pub(crate) fn signer() -> Result<Signer> {
    let der = identity::base64_decode(TEST_CA_PEM).context("the fixture certificate")?;
    Signer::from_certificate(&der).context("the fixture certificate")
}

/// Write the test certificate into `dir`, for `--identity-ca`.
pub fn write_ca(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("identity-ca.pem");
    std::fs::write(&path, TEST_CA_PEM)?;
    Ok(path)
}
