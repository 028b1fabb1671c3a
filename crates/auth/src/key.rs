//! Verification keys: the HS256 secret or the RS256/ES256 public key, checked once at start.
//!
//! PEM files are classified here from their label and the object identifiers inside, so
//! a configuration mistake (a private key, a certificate, an EC key on another curve, a
//! short RSA key) is reported at start-up instead of rejecting every token later.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey};

use crate::AuthConfigError;

/// Shortest HS256 secret accepted, in bytes: RFC 7518 §3.2 asks for a key at least as
/// long as the hash output (256 bits).
pub const MIN_HS256_SECRET_LEN: usize = 32;

/// RSA modulus sizes accepted for RS256, in bits.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// How tokens are verified. Exactly one algorithm is accepted: the one of the key.
///
/// `Debug` never prints the HS256 secret.
#[derive(Clone)]
pub enum VerifyKey {
    /// A shared secret (`auth.hs256_secret`); tokens must be HS256.
    Hs256(Vec<u8>),
    /// A PEM RSA public key (`auth.public_key_file`); tokens must be RS256.
    Rs256(Vec<u8>),
    /// A PEM EC P-256 public key (`auth.public_key_file`); tokens must be ES256.
    Es256(Vec<u8>),
}

impl VerifyKey {
    /// Reads a PEM public key and picks RS256 for an RSA key, ES256 for an EC P-256 key.
    ///
    /// Accepts `PUBLIC KEY` (SubjectPublicKeyInfo, what `openssl pkey -pubout` writes) and
    /// `RSA PUBLIC KEY` (PKCS#1). Private keys, certificates, other curves and RSA keys
    /// outside 2048–8192 bits are errors.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<VerifyKey, AuthConfigError> {
        let key = match classify_pem(pem)? {
            KeyType::Rsa => VerifyKey::Rs256(pem.to_vec()),
            KeyType::EcP256 => VerifyKey::Es256(pem.to_vec()),
        };
        key.decoding_key()?;
        Ok(key)
    }

    /// The one algorithm tokens must carry.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            VerifyKey::Hs256(_) => Algorithm::HS256,
            VerifyKey::Rs256(_) => Algorithm::RS256,
            VerifyKey::Es256(_) => Algorithm::ES256,
        }
    }

    /// Checks the key and turns it into what `jsonwebtoken` verifies with.
    pub(crate) fn decoding_key(&self) -> Result<DecodingKey, AuthConfigError> {
        match self {
            VerifyKey::Hs256(secret) => {
                if secret.len() < MIN_HS256_SECRET_LEN {
                    return Err(key_error(format!(
                        "the HS256 secret is {} bytes long; at least {MIN_HS256_SECRET_LEN} are needed",
                        secret.len()
                    )));
                }
                Ok(DecodingKey::from_secret(secret))
            }
            VerifyKey::Rs256(pem) => {
                if classify_pem(pem)? != KeyType::Rsa {
                    return Err(key_error(
                        "RS256 needs an RSA public key; this is an EC key",
                    ));
                }
                let key = DecodingKey::from_rsa_pem(pem)
                    .map_err(|_| key_error("the RSA public key cannot be read"))?;
                let bits = key
                    .try_get_as_bytes()
                    .ok()
                    .and_then(rsa_modulus_bits)
                    .ok_or_else(|| key_error("the RSA public key cannot be read"))?;
                if !RSA_BITS.contains(&bits) {
                    return Err(key_error(format!(
                        "the RSA key has {bits} bits; RS256 needs {} to {}",
                        RSA_BITS.start(),
                        RSA_BITS.end()
                    )));
                }
                Ok(key)
            }
            VerifyKey::Es256(pem) => {
                if classify_pem(pem)? != KeyType::EcP256 {
                    return Err(key_error(
                        "ES256 needs an EC P-256 public key; this is an RSA key",
                    ));
                }
                let key = DecodingKey::from_ec_pem(pem)
                    .map_err(|_| key_error("the EC public key cannot be read"))?;
                // An uncompressed P-256 point: 0x04, then 32 bytes each of x and y.
                match key.try_get_as_bytes() {
                    Ok([0x04, rest @ ..]) if rest.len() == 64 => Ok(key),
                    _ => Err(key_error(
                        "the EC public key is not an uncompressed P-256 point",
                    )),
                }
            }
        }
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyKey::Hs256(_) => f.write_str("Hs256(<redacted>)"),
            VerifyKey::Rs256(pem) => write!(f, "Rs256(<PEM public key, {} bytes>)", pem.len()),
            VerifyKey::Es256(pem) => write!(f, "Es256(<PEM public key, {} bytes>)", pem.len()),
        }
    }
}

fn key_error(reason: impl Into<String>) -> AuthConfigError {
    AuthConfigError::Key(reason.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    EcP256,
}

// DER encodings (tag, length, value) of the object identifiers we look for.
const OID_RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_PRIME256V1: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// What kind of public key a PEM file holds, from its first `-----BEGIN` block.
fn classify_pem(pem: &[u8]) -> Result<KeyType, AuthConfigError> {
    let (label, der) = pem_block(pem).ok_or_else(|| key_error("the key is not PEM text"))?;
    match label {
        "RSA PUBLIC KEY" => Ok(KeyType::Rsa),
        "PUBLIC KEY" => {
            if contains(&der, OID_RSA_ENCRYPTION) {
                Ok(KeyType::Rsa)
            } else if contains(&der, OID_EC_PUBLIC_KEY) {
                if contains(&der, OID_PRIME256V1) {
                    Ok(KeyType::EcP256)
                } else {
                    Err(key_error(
                        "the EC public key is not on curve P-256, which ES256 needs",
                    ))
                }
            } else {
                Err(key_error(
                    "unsupported public key type; RS256 needs RSA, ES256 needs EC P-256",
                ))
            }
        }
        l if l.ends_with("PRIVATE KEY") => Err(key_error(
            "this is a private key; configure the public key (openssl pkey -pubout)",
        )),
        "CERTIFICATE" => Err(key_error(
            "this is a certificate; configure its public key (openssl x509 -pubkey -noout)",
        )),
        _ => Err(key_error(format!(
            "unexpected PEM block {label:?}; expected \"PUBLIC KEY\""
        ))),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The label and decoded body of the first PEM block.
fn pem_block(pem: &[u8]) -> Option<(&str, Vec<u8>)> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let body = &rest[label_end + "-----".len()..];
    let end = body.find(&format!("-----END {label}-----"))?;
    let der = base64_decode(&body[..end])?;
    Some((label, der))
}

/// Standard base64 with padding; whitespace ignored.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let chars: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let data = chars
        .strip_suffix(b"==")
        .or_else(|| chars.strip_suffix(b"="))
        .unwrap_or(&chars);
    if !chars.len().is_multiple_of(4) || data.contains(&b'=') {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | value(c)?;
        }
        acc <<= 6 * (4 - chunk.len() as u32);
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// One DER element: its tag, its contents, and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Bit length of the modulus of a PKCS#1 `RSAPublicKey ::= SEQUENCE { n INTEGER, e INTEGER }`.
fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    let (0x30, seq, _) = der_element(der)? else {
        return None;
    };
    let (0x02, n, _) = der_element(seq)? else {
        return None;
    };
    let start = n.iter().position(|&b| b != 0)?;
    let n = &n[start..];
    Some(n.len() * 8 - n[0].leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const RS256_PUBLIC: &[u8] = include_bytes!("../tests/keys/rs256-public.pem");
    const RS256_PUBLIC_PKCS1: &[u8] = include_bytes!("../tests/keys/rs256-public-pkcs1.pem");
    const RS256_PRIVATE: &[u8] = include_bytes!("../tests/keys/rs256-private.pem");
    const ES256_PUBLIC: &[u8] = include_bytes!("../tests/keys/es256-public.pem");
    const ES256_PRIVATE: &[u8] = include_bytes!("../tests/keys/es256-private.pem");
    const ES384_PUBLIC: &[u8] = include_bytes!("../tests/keys/es384-public.pem");
    const RSA1024_PUBLIC: &[u8] = include_bytes!("../tests/keys/rsa1024-public.pem");

    fn err(r: Result<VerifyKey, AuthConfigError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn detects_rsa_and_ec() {
        let rsa = VerifyKey::from_public_key_pem(RS256_PUBLIC).unwrap();
        assert!(matches!(rsa, VerifyKey::Rs256(_)));
        assert_eq!(rsa.algorithm(), Algorithm::RS256);
        let pkcs1 = VerifyKey::from_public_key_pem(RS256_PUBLIC_PKCS1).unwrap();
        assert!(matches!(pkcs1, VerifyKey::Rs256(_)));
        let ec = VerifyKey::from_public_key_pem(ES256_PUBLIC).unwrap();
        assert!(matches!(ec, VerifyKey::Es256(_)));
        assert_eq!(ec.algorithm(), Algorithm::ES256);
    }

    #[test]
    fn rejects_unusable_keys_with_a_reason() {
        assert!(err(VerifyKey::from_public_key_pem(RS256_PRIVATE)).contains("private key"));
        assert!(err(VerifyKey::from_public_key_pem(ES256_PRIVATE)).contains("private key"));
        assert!(err(VerifyKey::from_public_key_pem(ES384_PUBLIC)).contains("P-256"));
        assert!(err(VerifyKey::from_public_key_pem(RSA1024_PUBLIC)).contains("1024 bits"));
        assert!(err(VerifyKey::from_public_key_pem(b"not a key")).contains("not PEM"));
        let cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(err(VerifyKey::from_public_key_pem(cert)).contains("certificate"));
        let garbage = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(err(VerifyKey::from_public_key_pem(garbage)).contains("unsupported"));
    }

    #[test]
    fn a_key_given_for_the_wrong_algorithm_is_rejected() {
        let e = VerifyKey::Rs256(ES256_PUBLIC.to_vec())
            .decoding_key()
            .unwrap_err();
        assert!(e.to_string().contains("RS256 needs an RSA"), "{e}");
        let e = VerifyKey::Es256(RS256_PUBLIC.to_vec())
            .decoding_key()
            .unwrap_err();
        assert!(e.to_string().contains("ES256 needs an EC"), "{e}");
    }

    #[test]
    fn hs256_secret_length() {
        let short = VerifyKey::Hs256(b"secret".to_vec())
            .decoding_key()
            .unwrap_err();
        assert!(short.to_string().contains("6 bytes"), "{short}");
        assert!(!short.to_string().contains("secret\""));
        VerifyKey::Hs256(vec![7; MIN_HS256_SECRET_LEN])
            .decoding_key()
            .unwrap();
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = VerifyKey::Hs256(b"super-secret-value-0123456789abcdef".to_vec());
        let shown = format!("{key:?}");
        assert_eq!(shown, "Hs256(<redacted>)");
        let shown = format!("{:?}", VerifyKey::Rs256(RS256_PUBLIC.to_vec()));
        assert!(!shown.contains("MII"), "{shown}");
    }

    #[test]
    fn base64_round_trips_known_vectors() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9v\nYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert!(base64_decode("Zm9").is_none());
        assert!(base64_decode("Z=9v").is_none());
        assert!(base64_decode("Zm9*").is_none());
    }

    #[test]
    fn rsa_bits_of_the_test_keys() {
        let bits = |pem| {
            let key = DecodingKey::from_rsa_pem(pem).unwrap();
            rsa_modulus_bits(key.try_get_as_bytes().unwrap()).unwrap()
        };
        assert_eq!(bits(RS256_PUBLIC), 2048);
        assert_eq!(bits(RS256_PUBLIC_PKCS1), 2048);
        assert_eq!(bits(RSA1024_PUBLIC), 1024);
        assert_eq!(rsa_modulus_bits(&[0x30, 0x03, 0x02, 0x01, 0x05]), Some(3));
        assert_eq!(rsa_modulus_bits(&[0x30, 0x05, 0x02]), None);
    }
}
