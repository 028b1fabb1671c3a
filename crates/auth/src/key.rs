//! Verification keys: the HS256 secret or the RS256/ES256 public key, checked once at start.
//!
//! PEM files are classified here from their label and, through the `pem` and `spki`
//! crates, the algorithm and curve of their SubjectPublicKeyInfo, so a configuration
//! mistake (a private key, a certificate, an EC key on another curve, a short RSA key) is
//! reported at start-up instead of rejecting every token later.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey};
use spki::der::asn1::UintRef;
use spki::der::{Decode, Reader, SliceReader};
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

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

/// `rsaEncryption` (PKCS #1).
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `id-ecPublicKey` (RFC 5480).
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `prime256v1` / `secp256r1`, the curve of ES256.
const OID_PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// What kind of public key a PEM file holds, from its first block: its label, then the
/// algorithm (and curve) of its SubjectPublicKeyInfo.
fn classify_pem(pem: &[u8]) -> Result<KeyType, AuthConfigError> {
    let block = pem::parse(pem).map_err(|_| key_error("the key is not PEM text"))?;
    match block.tag() {
        "RSA PUBLIC KEY" => Ok(KeyType::Rsa),
        "PUBLIC KEY" => {
            let info = SubjectPublicKeyInfoRef::from_der(block.contents())
                .map_err(|_| key_error("the public key cannot be read"))?;
            let algorithm = info.algorithm;
            if algorithm.oid == OID_RSA_ENCRYPTION {
                Ok(KeyType::Rsa)
            } else if algorithm.oid == OID_EC_PUBLIC_KEY {
                let curve = algorithm
                    .parameters
                    .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
                if curve == Some(OID_PRIME256V1) {
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
        label => Err(key_error(format!(
            "unexpected PEM block {label:?}; expected \"PUBLIC KEY\""
        ))),
    }
}

/// Bit length of the modulus of a PKCS #1 `RSAPublicKey ::= SEQUENCE { n INTEGER, e INTEGER }`.
fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    let mut reader = SliceReader::new(der).ok()?;
    let modulus = reader
        .sequence(|r| {
            let n: UintRef<'_> = r.decode()?;
            let _exponent: UintRef<'_> = r.decode()?;
            Ok(n)
        })
        .ok()?;
    let n = modulus.as_bytes();
    let first = n.first()?;
    Some(n.len() * 8 - first.leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
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
        assert!(err(VerifyKey::from_public_key_pem(garbage)).contains("cannot be read"));
        // The Ed25519 key of RFC 8410 §10.1: a valid key of a type tokens cannot use.
        let ed25519 = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert!(err(VerifyKey::from_public_key_pem(ed25519)).contains("unsupported"));
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
    fn rsa_bits_of_the_test_keys() {
        let bits = |pem| {
            let key = DecodingKey::from_rsa_pem(pem).unwrap();
            rsa_modulus_bits(key.try_get_as_bytes().unwrap()).unwrap()
        };
        assert_eq!(bits(RS256_PUBLIC), 2048);
        assert_eq!(bits(RS256_PUBLIC_PKCS1), 2048);
        assert_eq!(bits(RSA1024_PUBLIC), 1024);
        // SEQUENCE { INTEGER 5, INTEGER 3 }: a 3-bit modulus.
        assert_eq!(
            rsa_modulus_bits(&[0x30, 0x06, 0x02, 0x01, 0x05, 0x02, 0x01, 0x03]),
            Some(3)
        );
        assert_eq!(rsa_modulus_bits(&[0x30, 0x05, 0x02]), None);
    }
}
