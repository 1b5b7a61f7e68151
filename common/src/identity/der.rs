//! Just enough ASN.1 to read a PKCS#7 signed identity document and an
//! X.509 certificate, and to write the former (the IMDS simulator signs).
//!
//! Reading accepts BER's indefinite lengths and constructed OCTET STRINGs,
//! because IMDS serves its `rsa2048` signature that way (OpenSSL's
//! streaming encoder). Tags above 30 are refused: nothing read here uses
//! them.

use super::IdentityError;

pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
pub const INTEGER: u8 = 0x02;
pub const BIT_STRING: u8 = 0x03;
pub const OCTET_STRING: u8 = 0x04;
pub const NULL: u8 = 0x05;
pub const OID: u8 = 0x06;
pub const UTC_TIME: u8 = 0x17;
/// `[0]`, constructed (EXPLICIT, or IMPLICIT over a constructed type).
pub const CONTEXT_0: u8 = 0xA0;
const CONSTRUCTED: u8 = 0x20;
/// How deep a structure may nest: a hostile input cannot recurse further.
const MAX_DEPTH: usize = 16;

/// One element: its tag, its content (children for a constructed one,
/// the end-of-contents octets excluded) and all its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub raw: &'a [u8],
    /// Encoded with an indefinite length (BER).
    pub indefinite: bool,
}

fn bad(what: &str) -> IdentityError {
    IdentityError::Malformed(what.to_owned())
}

/// The element at the start of `input`, and what follows it.
pub fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), IdentityError> {
    read_at(input, 0)
}

fn read_at(input: &[u8], depth: usize) -> Result<(Tlv<'_>, &[u8]), IdentityError> {
    if depth > MAX_DEPTH {
        return Err(bad("nested too deep"));
    }
    let (&tag, rest) = input.split_first().ok_or_else(|| bad("truncated tag"))?;
    if tag & 0x1f == 0x1f {
        return Err(bad("high tag number"));
    }
    let (&first, rest) = rest.split_first().ok_or_else(|| bad("truncated length"))?;
    if first == 0x80 {
        if tag & CONSTRUCTED == 0 {
            return Err(bad("indefinite length on a primitive"));
        }
        // Children until the end-of-contents octets.
        let mut inner = rest;
        loop {
            if inner.starts_with(&[0, 0]) {
                let used = rest.len() - inner.len();
                let total = 2 + used + 2;
                let tlv = Tlv {
                    tag,
                    content: &rest[..used],
                    raw: &input[..total],
                    indefinite: true,
                };
                return Ok((tlv, &input[total..]));
            }
            if inner.is_empty() {
                return Err(bad("missing end of contents"));
            }
            inner = read_at(inner, depth + 1)?.1;
        }
    }
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n > 4 || rest.len() < n {
            return Err(bad("length"));
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(bad("truncated content"));
    }
    let header = input.len() - rest.len();
    let tlv = Tlv {
        tag,
        content: &rest[..len],
        raw: &input[..header + len],
        indefinite: false,
    };
    Ok((tlv, &rest[len..]))
}

impl<'a> Tlv<'a> {
    /// The element, which must have tag `tag`.
    pub fn expect(self, tag: u8, what: &str) -> Result<Tlv<'a>, IdentityError> {
        if self.tag == tag {
            Ok(self)
        } else {
            Err(bad(&format!(
                "{what}: tag {:#04x}, expected {tag:#04x}",
                self.tag
            )))
        }
    }

    /// The children of a constructed element, in order.
    pub fn children(&self) -> Result<Vec<Tlv<'a>>, IdentityError> {
        let mut out = Vec::new();
        let mut rest = self.content;
        while !rest.is_empty() {
            let (t, r) = read_at(rest, 1)?;
            out.push(t);
            rest = r;
        }
        Ok(out)
    }

    /// An OCTET STRING's bytes, primitive or (BER) constructed of chunks.
    pub fn octets(&self) -> Result<Vec<u8>, IdentityError> {
        match self.tag {
            OCTET_STRING => Ok(self.content.to_vec()),
            t if t == OCTET_STRING | CONSTRUCTED => {
                let mut out = Vec::new();
                for c in self.children()? {
                    out.extend(c.octets()?);
                }
                Ok(out)
            }
            t => Err(bad(&format!("expected an OCTET STRING, found {t:#04x}"))),
        }
    }
}

/// `children` of `tlv`, which must be exactly `n` or more.
pub fn at_least<'a>(tlv: &Tlv<'a>, n: usize, what: &str) -> Result<Vec<Tlv<'a>>, IdentityError> {
    let c = tlv.children()?;
    if c.len() < n {
        return Err(bad(&format!("{what}: {} elements, expected {n}", c.len())));
    }
    Ok(c)
}

/// The OID of an AlgorithmIdentifier (`SEQUENCE { OID, params }`).
pub fn algorithm<'a>(tlv: &Tlv<'a>, what: &str) -> Result<&'a [u8], IdentityError> {
    let c = at_least(&tlv.expect(SEQUENCE, what)?, 1, what)?;
    Ok(c[0].expect(OID, what)?.content)
}

/// A DER element with a definite length.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend(&bytes[skip..]);
    }
    out.extend(content);
    out
}

/// A BER element with an indefinite length (as IMDS serves the outer
/// layers of its signature).
pub fn indefinite(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag, 0x80];
    out.extend(content);
    out.extend([0, 0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definite_and_indefinite_lengths_read_the_same_children() {
        let inner = [tlv(INTEGER, &[1]), tlv(OCTET_STRING, &[0xaa; 200])].concat();
        for outer in [tlv(SEQUENCE, &inner), indefinite(SEQUENCE, &inner)] {
            let (t, rest) = read(&outer).unwrap();
            assert!(rest.is_empty());
            assert_eq!(t.raw.len(), outer.len());
            let c = t.children().unwrap();
            assert_eq!(c.len(), 2);
            assert_eq!(c[1].octets().unwrap(), vec![0xaa; 200]);
        }
    }

    #[test]
    fn a_constructed_octet_string_is_its_chunks_joined() {
        let chunks = [tlv(OCTET_STRING, b"ab"), tlv(OCTET_STRING, b"cd")].concat();
        let whole = indefinite(OCTET_STRING | CONSTRUCTED, &chunks);
        let (t, _) = read(&whole).unwrap();
        assert_eq!(t.octets().unwrap(), b"abcd");
    }

    #[test]
    fn truncated_and_hostile_inputs_are_errors_not_panics() {
        let good = tlv(SEQUENCE, &tlv(INTEGER, &[7]));
        for cut in 0..good.len() {
            assert!(read(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(read(&[0x30, 0x85, 1, 2, 3, 4, 5]).is_err(), "5-byte length");
        assert!(read(&[0x04, 0x80, 0, 0]).is_err(), "indefinite primitive");
        assert!(
            read(&[0x30, 0x80, 0x02, 0x01, 0x01]).is_err(),
            "no end of contents"
        );
        // Nesting past the limit is refused instead of recursing.
        let deep = [[0x30, 0x80].repeat(100), [0, 0].repeat(100)].concat();
        assert!(read(&deep).is_err());
    }
}
