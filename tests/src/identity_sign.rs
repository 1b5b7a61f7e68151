//! The test key that signs instance identity documents, as AWS's regional
//! keys sign real ones: the IMDS simulator serves documents signed with it,
//! coordinators under test trust its certificate (`identity_ca`), and raw
//! tests sign (or forge) registrations with it.
//!
//! The key and its self-signed certificate are fixtures
//! (`tests/fixtures/identity/`); they sign nothing outside the tests.

use crate::imds_sim::InstanceMeta;
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

/// The identity document IMDS serves for `meta`, in AWS's layout.
pub fn document(meta: &InstanceMeta) -> Result<String> {
    Ok(serde_json::to_string_pretty(&serde_json::json!({
        "accountId": meta.account_id,
        "architecture": "x86_64",
        "availabilityZone": meta.availability_zone,
        "billingProducts": null,
        "devpayProductCodes": null,
        "marketplaceProductCodes": null,
        "imageId": "ami-0sim0000000000000",
        "instanceId": meta.instance_id,
        "instanceType": meta.instance_type,
        "kernelId": null,
        "pendingTime": "2026-12-04T09:00:00Z",
        "privateIp": "10.0.0.10",
        "ramdiskId": null,
        "region": meta.region,
        "version": "2017-09-30",
    }))?)
}

/// `document` with its `rsa2048` signature under the test key.
pub fn proof(meta: &InstanceMeta) -> Result<IdentityProof> {
    proof_of(document(meta)?)
}

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

fn signer() -> Result<Signer> {
    let der = identity::base64_decode(TEST_CA_PEM).context("the fixture certificate")?;
    Signer::from_certificate(&der).context("the fixture certificate")
}

/// Write the test certificate into `dir`, for `--identity-ca`.
pub fn write_ca(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("identity-ca.pem");
    std::fs::write(&path, TEST_CA_PEM)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the simulator signs, the coordinator's parser accepts with the
    /// fields of the instance (the RSA check itself is the coordinator's).
    #[test]
    fn a_signed_document_parses_to_its_instance() {
        let meta = InstanceMeta::spot("i-0abc", "c5.xlarge", "us-east-1b", "db");
        let p = proof(&meta).unwrap();
        let pkcs7 = identity::base64_decode(&p.rsa2048).unwrap();
        let doc = identity::verify(
            &pkcs7,
            Some(&p.document),
            &[signer().unwrap()],
            |_, _, _| true,
        )
        .unwrap();
        assert_eq!(
            (
                doc.instance_id.as_str(),
                doc.instance_type.as_str(),
                doc.availability_zone.as_str()
            ),
            ("i-0abc", "c5.xlarge", "us-east-1b")
        );
        assert_eq!(
            (doc.account_id.as_str(), doc.region.as_str()),
            (ACCOUNT_ID, "us-east-1")
        );
    }
}
