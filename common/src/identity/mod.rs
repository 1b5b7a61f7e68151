//! The signed instance identity document: what proves, at registration,
//! which instance an agent runs on.
//!
//! IMDS serves the document (`/latest/dynamic/instance-identity/document`,
//! JSON) and, at `.../rsa2048`, a PKCS#7 SignedData that embeds it, signed
//! with RSA-2048 and SHA-256 by a key whose certificate AWS publishes per
//! region. [`verify`] checks such a signature against a set of
//! certificates ([`Signer`]) and answers the document it signed; the RSA
//! arithmetic is handed in (this crate does no crypto beyond a digest),
//! so the coordinator brings the library it already links. [`sign`] is
//! the other side, for the IMDS simulator and tests.
//!
//! The signer is found by the signature's issuer and serial number, never
//! by trying each certificate, so a registration costs one RSA check
//! however many regions the bundle holds.

pub mod der;

use der::{BIT_STRING, CONTEXT_0, INTEGER, NULL, OCTET_STRING, OID, SEQUENCE, SET};
use serde::Deserialize;
use sha2::{Digest, Sha256};

const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_SHA256_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const OID_CONTENT_TYPE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03];
const OID_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];

/// Why an identity proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("malformed signature: {0}")]
    Malformed(String),
    #[error("unsupported algorithm: {0}")]
    Unsupported(String),
    #[error("signed by a certificate not in the identity bundle")]
    UnknownSigner,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the document does not match what was signed")]
    Mismatch,
    #[error("the signed document does not parse: {0}")]
    Document(String),
}

/// The fields of an instance identity document the coordinator uses (it
/// has more; they are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub account_id: String,
    pub instance_id: String,
    pub instance_type: String,
    pub availability_zone: String,
    pub region: String,
    #[serde(default)]
    pub pending_time: Option<String>,
}

/// A certificate that may sign identity documents: how a signature names
/// it, and its RSA public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The issuer Name, DER, as a signature's IssuerAndSerialNumber
    /// carries it.
    pub issuer: Vec<u8>,
    pub serial: Vec<u8>,
    /// `RSAPublicKey`, DER (the subjectPublicKey bits).
    pub public_key: Vec<u8>,
}

impl Signer {
    /// From an X.509 certificate (DER). Only RSA keys sign identity
    /// documents; any other key is refused.
    pub fn from_certificate(cert: &[u8]) -> Result<Signer, IdentityError> {
        let (cert, _) = der::read(cert)?;
        let cert = der::at_least(&cert.expect(SEQUENCE, "certificate")?, 1, "certificate")?;
        let tbs = der::at_least(&cert[0].expect(SEQUENCE, "tbsCertificate")?, 6, "tbs")?;
        // An optional `[0] version` comes first.
        let tbs = if tbs[0].tag == CONTEXT_0 {
            &tbs[1..]
        } else {
            &tbs[..]
        };
        if tbs.len() < 6 {
            return Err(IdentityError::Malformed("tbsCertificate too short".into()));
        }
        let serial = tbs[0].expect(INTEGER, "serial")?.content.to_vec();
        let issuer = tbs[2].expect(SEQUENCE, "issuer")?.raw.to_vec();
        let spki = der::at_least(&tbs[5].expect(SEQUENCE, "subjectPublicKeyInfo")?, 2, "spki")?;
        if der::algorithm(&spki[0], "key algorithm")? != OID_RSA {
            return Err(IdentityError::Unsupported("a key that is not RSA".into()));
        }
        let bits = spki[1].expect(BIT_STRING, "subjectPublicKey")?.content;
        match bits.split_first() {
            Some((0, key)) => Ok(Signer {
                issuer,
                serial,
                public_key: key.to_vec(),
            }),
            _ => Err(IdentityError::Malformed("subjectPublicKey bits".into())),
        }
    }
}

/// The parts of a SignedData a verification needs.
#[derive(Debug)]
struct Parsed<'a> {
    content: Vec<u8>,
    issuer: &'a [u8],
    serial: &'a [u8],
    /// What the signature covers: the signed attributes re-tagged as a
    /// SET (RFC 5652 5.4), or the content itself when there are none.
    covered: Vec<u8>,
    message_digest: Option<Vec<u8>>,
    signature: Vec<u8>,
}

fn parse(pkcs7: &[u8]) -> Result<Parsed<'_>, IdentityError> {
    let (ci, _) = der::read(pkcs7)?;
    let ci = der::at_least(&ci.expect(SEQUENCE, "ContentInfo")?, 2, "ContentInfo")?;
    if ci[0].expect(OID, "contentType")?.content != OID_SIGNED_DATA {
        return Err(IdentityError::Malformed("not a SignedData".into()));
    }
    let sd = der::at_least(&ci[1].expect(CONTEXT_0, "content")?, 1, "content")?[0];
    let sd = der::at_least(&sd.expect(SEQUENCE, "SignedData")?, 4, "SignedData")?;
    let encap = der::at_least(&sd[2].expect(SEQUENCE, "encapContentInfo")?, 2, "encap")?;
    if encap[0].expect(OID, "eContentType")?.content != OID_DATA {
        return Err(IdentityError::Malformed(
            "encapsulated content is not data".into(),
        ));
    }
    let econtent = der::at_least(&encap[1].expect(CONTEXT_0, "eContent")?, 1, "eContent")?[0];
    let content = econtent.octets()?;
    // SignedData has at least four children (checked above): the signer
    // infos are its last.
    let infos = sd[sd.len() - 1].expect(SET, "signerInfos")?;
    let info = der::at_least(&infos, 1, "signerInfos")?[0];
    let info = der::at_least(&info.expect(SEQUENCE, "SignerInfo")?, 5, "SignerInfo")?;
    let sid = der::at_least(
        &info[1].expect(SEQUENCE, "IssuerAndSerialNumber")?,
        2,
        "sid",
    )?;
    let (issuer, serial) = (
        sid[0].expect(SEQUENCE, "issuer")?.raw,
        sid[1].expect(INTEGER, "serial")?.content,
    );
    if der::algorithm(&info[2], "digestAlgorithm")? != OID_SHA256 {
        return Err(IdentityError::Unsupported(
            "a digest that is not SHA-256".into(),
        ));
    }
    let (covered, message_digest, rest) = if info[3].tag == CONTEXT_0 {
        let attrs = info[3];
        if attrs.indefinite {
            return Err(IdentityError::Malformed("signed attributes not DER".into()));
        }
        let mut covered = attrs.raw.to_vec();
        covered[0] = SET;
        let mut digest = None;
        for attr in attrs.children()? {
            let a = der::at_least(&attr.expect(SEQUENCE, "attribute")?, 2, "attribute")?;
            let values = der::at_least(&a[1].expect(SET, "attribute values")?, 1, "values")?;
            match a[0].expect(OID, "attribute type")?.content {
                OID_MESSAGE_DIGEST => digest = Some(values[0].octets()?),
                OID_CONTENT_TYPE if values[0].expect(OID, "content type")?.content != OID_DATA => {
                    return Err(IdentityError::Malformed("signed content type".into()));
                }
                _ => {}
            }
        }
        if digest.is_none() {
            return Err(IdentityError::Malformed("no message digest".into()));
        }
        (covered, digest, &info[4..])
    } else {
        (content.clone(), None, &info[3..])
    };
    if rest.len() < 2 {
        return Err(IdentityError::Malformed("SignerInfo too short".into()));
    }
    let alg = der::algorithm(&rest[0], "signatureAlgorithm")?;
    if alg != OID_RSA && alg != OID_SHA256_RSA {
        return Err(IdentityError::Unsupported(
            "a signature that is not RSA".into(),
        ));
    }
    Ok(Parsed {
        content,
        issuer,
        serial,
        covered,
        message_digest,
        signature: rest[1].octets()?,
    })
}

/// Check `pkcs7` (the decoded `rsa2048` body) against `signers` and answer
/// the document it signed. `rsa_verify(public_key, message, signature)`
/// checks an RSASSA-PKCS1-v1_5 SHA-256 signature. With `document` (the
/// plain body IMDS also serves), it must be what was signed.
pub fn verify(
    pkcs7: &[u8],
    document: Option<&str>,
    signers: &[Signer],
    rsa_verify: impl FnOnce(&[u8], &[u8], &[u8]) -> bool,
) -> Result<Document, IdentityError> {
    let p = parse(pkcs7)?;
    let signer = signers
        .iter()
        .find(|s| s.issuer == p.issuer && s.serial == p.serial)
        .ok_or(IdentityError::UnknownSigner)?;
    if let Some(d) = &p.message_digest
        && d.as_slice() != Sha256::digest(&p.content).as_slice()
    {
        return Err(IdentityError::Mismatch);
    }
    if !rsa_verify(&signer.public_key, &p.covered, &p.signature) {
        return Err(IdentityError::BadSignature);
    }
    if let Some(doc) = document
        && doc.trim().as_bytes() != p.content.trim_ascii()
    {
        return Err(IdentityError::Mismatch);
    }
    serde_json::from_slice(&p.content).map_err(|e| IdentityError::Document(e.to_string()))
}

/// Sign `document` as IMDS does (SignedData with signed attributes, outer
/// layers of indefinite length, no certificates), for `signer`;
/// `rsa_sign(message)` answers an RSASSA-PKCS1-v1_5 SHA-256 signature.
pub fn sign(document: &[u8], signer: &Signer, rsa_sign: impl FnOnce(&[u8]) -> Vec<u8>) -> Vec<u8> {
    use der::{indefinite, tlv};
    let alg = |oid: &[u8]| tlv(SEQUENCE, &[tlv(OID, oid), tlv(NULL, &[])].concat());
    let attr =
        |oid: &[u8], value: Vec<u8>| tlv(SEQUENCE, &[tlv(OID, oid), tlv(SET, &value)].concat());
    // DER orders a SET OF by encoding: the content type's is shorter.
    let attrs = [
        attr(OID_CONTENT_TYPE, tlv(OID, OID_DATA)),
        attr(
            OID_MESSAGE_DIGEST,
            tlv(OCTET_STRING, &Sha256::digest(document)),
        ),
    ]
    .concat();
    let signature = rsa_sign(&tlv(SET, &attrs));
    let info = tlv(
        SEQUENCE,
        &[
            tlv(INTEGER, &[1]),
            tlv(
                SEQUENCE,
                &[signer.issuer.clone(), tlv(INTEGER, &signer.serial)].concat(),
            ),
            alg(OID_SHA256),
            tlv(CONTEXT_0, &attrs),
            alg(OID_RSA),
            tlv(OCTET_STRING, &signature),
        ]
        .concat(),
    );
    let encap = indefinite(
        SEQUENCE,
        &[
            tlv(OID, OID_DATA),
            indefinite(CONTEXT_0, &tlv(OCTET_STRING, document)),
        ]
        .concat(),
    );
    let signed_data = indefinite(
        SEQUENCE,
        &[
            tlv(INTEGER, &[1]),
            tlv(SET, &alg(OID_SHA256)),
            encap,
            tlv(SET, &info),
        ]
        .concat(),
    );
    indefinite(
        SEQUENCE,
        &[
            tlv(OID, OID_SIGNED_DATA),
            indefinite(CONTEXT_0, &signed_data),
        ]
        .concat(),
    )
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 (standard alphabet, padded) in lines of 64, as IMDS serves it.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(3).enumerate() {
        if i > 0 && i % 16 == 0 {
            out.push('\n');
        }
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64 with any whitespace between (IMDS breaks its lines; PEM
/// armour, when an operator pasted it, is stripped).
pub fn base64_decode(text: &str) -> Result<Vec<u8>, IdentityError> {
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let body = body.trim_end_matches('=');
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in body.bytes() {
        let v = B64
            .iter()
            .position(|&b| b == c)
            .ok_or_else(|| IdentityError::Malformed("not base64".into()))?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = include_str!("../../../tests/fixtures/identity/document.json");
    const CA: &str = include_str!("../../../tests/fixtures/identity/test-ca.pem");

    fn signer() -> Signer {
        Signer::from_certificate(&base64_decode(CA).unwrap()).unwrap()
    }

    #[test]
    fn base64_round_trips_every_length() {
        for n in 0..70 {
            let bytes: Vec<u8> = (0..n as u8).map(|b| b.wrapping_mul(37)).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes, "{n}");
        }
        assert!(base64_decode("ab$c").is_err());
    }

    /// OpenSSL's own SignedData (definite and streamed), with its extra
    /// signed attributes: parsed to the document, the signer found by
    /// issuer and serial, and the covered bytes handed to the RSA check.
    /// Every truncation and every single-byte change of a real signature
    /// is an error or a parse, never a panic; no truncation parses.
    #[test]
    fn every_cut_and_every_changed_byte_of_a_signature_is_handled() {
        let p7 = include_bytes!("../../../tests/fixtures/identity/document-stream.p7");
        for cut in 0..p7.len() {
            assert!(
                verify(&p7[..cut], Some(DOC), &[signer()], |_, _, _| true).is_err(),
                "{cut}"
            );
        }
        for i in 0..p7.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut changed = p7.to_vec();
                changed[i] ^= flip;
                let _ = verify(&changed, Some(DOC), &[signer()], |_, _, _| true);
            }
        }
    }

    #[test]
    fn openssl_signatures_parse_to_the_document_and_their_signer() {
        for p7 in [
            &include_bytes!("../../../tests/fixtures/identity/document.p7")[..],
            &include_bytes!("../../../tests/fixtures/identity/document-stream.p7")[..],
        ] {
            let mut seen = None;
            let doc = verify(p7, Some(DOC), &[signer()], |key, msg, sig| {
                seen = Some((key.to_vec(), msg.to_vec(), sig.len()));
                true
            })
            .unwrap();
            assert_eq!(doc.instance_id, "i-0fixture0000000001");
            assert_eq!(doc.account_id, "123456789012");
            let (key, msg, sig) = seen.unwrap();
            assert_eq!(key, signer().public_key);
            assert_eq!(msg[0], SET, "the signed attributes, re-tagged");
            assert_eq!(sig, 256, "RSA-2048");
        }
        let stranger = include_bytes!("../../../tests/fixtures/identity/stranger.p7");
        assert_eq!(
            verify(stranger, None, &[signer()], |_, _, _| true),
            Err(IdentityError::UnknownSigner)
        );
    }

    #[test]
    fn what_sign_writes_verify_reads_and_a_changed_byte_is_caught() {
        let p7 = sign(DOC.as_bytes(), &signer(), |msg| msg.to_vec());
        // The "signature" here is the message itself: the check sees
        // exactly what sign() signed.
        let ok = |_: &[u8], msg: &[u8], sig: &[u8]| msg == sig;
        assert!(verify(&p7, Some(DOC), &[signer()], ok).is_ok());
        assert_eq!(
            verify(&p7, Some("{\"other\": 1}"), &[signer()], ok),
            Err(IdentityError::Mismatch)
        );
        // Swap the embedded document for another of the same length: the
        // message digest no longer matches.
        let forged = DOC.replace("i-0fixture0000000001", "i-0fixture0000000002");
        let at = p7
            .windows(DOC.len())
            .position(|w| w == DOC.as_bytes())
            .unwrap();
        let mut tampered = p7.clone();
        tampered[at..at + DOC.len()].copy_from_slice(forged.as_bytes());
        assert_eq!(
            verify(&tampered, None, &[signer()], ok),
            Err(IdentityError::Mismatch)
        );
        assert_eq!(
            verify(&p7, None, &[signer()], |_, _, _| false),
            Err(IdentityError::BadSignature)
        );
        for cut in [0, 10, p7.len() / 2, p7.len() - 3] {
            assert!(
                verify(&p7[..cut], None, &[signer()], ok).is_err(),
                "cut {cut}"
            );
        }
    }
}
