//! Bearer tokens: what a caller of the public API may do, signed by the region's token key.
//!
//! A token is a JWT in its compact form (`header.claims.signature`, base64url), signed with HMAC-SHA256
//! (`HS256`) under the key in the security dir's `token.key`, so standard tools can read one. A node
//! accepts only `HS256` under its own key: the signature is checked before anything else of the token is
//! read. The claims name a subject, an optional expiry, and the grants: operations on streams whose names
//! start with a prefix.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::Deserialize;
use serde::Serialize;

/// The longest token a node reads (an `authorization` header of more is refused unread).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The JOSE header of every token: HMAC-SHA256, a JWT.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// An operation a token may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Append events to streams.
    Append,
    /// Read streams (and, with the empty prefix, whole partitions).
    Read,
    /// Subscribe to streams.
    Subscribe,
    /// Run SQL queries over streams.
    Query,
    /// Administer the region (`Cluster`: status, membership, leadership). Stream prefixes do not apply.
    Admin,
}

impl Operation {
    /// Every operation, for a token that may do anything.
    pub const ALL: [Operation; 5] =
        [Operation::Append, Operation::Read, Operation::Subscribe, Operation::Query, Operation::Admin];
}

impl std::str::FromStr for Operation {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> anyhow::Result<Operation> {
        Operation::ALL
            .into_iter()
            .find(|operation| operation.to_string() == name)
            .ok_or_else(|| anyhow::anyhow!("{name:?} is not an operation (append, read, subscribe, query, admin)"))
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Operation::Append => "append",
            Operation::Read => "read",
            Operation::Subscribe => "subscribe",
            Operation::Query => "query",
            Operation::Admin => "admin",
        };
        f.write_str(name)
    }
}

/// Operations on the streams whose names start with `stream_prefix` (the empty prefix: every stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// What may be done.
    pub operations: Vec<Operation>,
    /// To which streams: those whose names start with this.
    pub stream_prefix: String,
}

/// What a token says: who holds it, until when, and what it grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who holds the token (for logs; grants decide).
    pub sub: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch; none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// What the holder may do.
    pub grants: Vec<Grant>,
}

impl Claims {
    /// Whether these claims allow `operation` on `stream` (`None`: every stream, as a partition read needs).
    pub fn allows(&self, operation: Operation, stream: Option<&str>) -> bool {
        self.grants.iter().any(|grant| {
            grant.operations.contains(&operation)
                && (operation == Operation::Admin
                    || match stream {
                        Some(stream) => stream.starts_with(&grant.stream_prefix),
                        None => grant.stream_prefix.is_empty(),
                    })
        })
    }

    /// The stream prefixes of every grant of `operation` (none: the token does not grant it).
    pub fn prefixes_for(&self, operation: Operation) -> Vec<String> {
        let granting = self.grants.iter().filter(|grant| grant.operations.contains(&operation));
        granting.map(|grant| grant.stream_prefix.clone()).collect()
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    /// Not three base64url parts, or parts that do not decode.
    #[error("the token is not a JWT (header.claims.signature)")]
    Malformed,
    /// The signature does not match this region's token key.
    #[error("the token's signature does not match this region's token key")]
    BadSignature,
    /// Signed, but not with HS256, or its claims are not Fjord's.
    #[error("the token is signed but its header or claims are not Fjord's: {0}")]
    BadClaims(String),
    /// Past its expiry.
    #[error("the token expired at {0} (seconds since the epoch)")]
    Expired(u64),
}

/// The region's token key: signs and verifies tokens.
pub struct TokenKey {
    key: hmac::Key,
}

impl TokenKey {
    /// The bytes of a new random key (32, from the system's CSPRNG).
    pub fn generate_secret() -> anyhow::Result<[u8; 32]> {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| anyhow::anyhow!("the system's random number generator failed"))?;
        Ok(secret)
    }

    /// A key from its secret bytes.
    pub fn from_secret(secret: &[u8]) -> TokenKey {
        TokenKey { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    /// Reads a key file: the secret in hex, at least 32 bytes of it.
    pub fn load(path: &Path) -> anyhow::Result<TokenKey> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading token key {}", path.display()))?;
        let secret = decode_hex(text.trim()).with_context(|| format!("token key {} is not hex", path.display()))?;
        anyhow::ensure!(secret.len() >= 32, "token key {} holds {} bytes; at least 32", path.display(), secret.len());
        Ok(TokenKey::from_secret(&secret))
    }

    /// Signs `claims` into a token.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let claims = serde_json::to_vec(claims)?;
        let signed = format!("{}.{}", URL_SAFE_NO_PAD.encode(HEADER), URL_SAFE_NO_PAD.encode(claims));
        let signature = hmac::sign(&self.key, signed.as_bytes());
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }

    /// The claims of `token` if this key signed it and it has not expired at `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header, claims) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.key, signed.as_bytes(), &signature).map_err(|_| TokenError::BadSignature)?;
        let header: serde_json::Value = decode_json(header)?;
        if header.get("alg").and_then(|alg| alg.as_str()) != Some("HS256") {
            return Err(TokenError::BadClaims(format!("header {header} is not HS256")));
        }
        let claims: Claims = decode_json(claims)?;
        let now = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs());
        match claims.exp {
            Some(exp) if exp <= now => Err(TokenError::Expired(exp)),
            _ => Ok(claims),
        }
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|e| TokenError::BadClaims(e.to_string()))
}

/// Lower-case hex of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(text.len().is_multiple_of(2), "odd length");
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2).unwrap_or("?"), 16).map_err(anyhow::Error::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn claims(exp: Option<u64>) -> Claims {
        Claims {
            sub: "orders-service".to_owned(),
            iat: 1,
            exp,
            grants: vec![Grant {
                operations: vec![Operation::Append, Operation::Read],
                stream_prefix: "order-".into(),
            }],
        }
    }

    #[test]
    fn a_signed_token_verifies_and_grants_only_its_prefix() {
        let key = TokenKey::from_secret(&[7; 32]);
        let token = key.sign(&claims(None)).unwrap();
        let verified = key.verify(&token, SystemTime::now()).unwrap();
        assert!(verified.allows(Operation::Append, Some("order-17")));
        assert!(!verified.allows(Operation::Append, Some("invoice-17")));
        assert!(!verified.allows(Operation::Subscribe, Some("order-17")));
        assert!(!verified.allows(Operation::Read, None), "a partition read needs the empty prefix");
        assert!(!verified.allows(Operation::Admin, None));
    }

    #[test]
    fn forged_tampered_expired_and_unsigned_tokens_are_refused() {
        let key = TokenKey::from_secret(&[7; 32]);
        let other = TokenKey::from_secret(&[8; 32]);
        let token = key.sign(&claims(Some(100))).unwrap();
        assert_eq!(other.verify(&token, SystemTime::UNIX_EPOCH), Err(TokenError::BadSignature));
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        assert!(key.verify(&token, at(99)).is_ok());
        assert_eq!(key.verify(&token, at(100)), Err(TokenError::Expired(100)));
        // Claims swapped for more generous ones under the old signature.
        let mut generous = claims(None);
        generous.grants[0].stream_prefix = String::new();
        let forged = other.sign(&generous).unwrap();
        let (_, forged_claims, _) = split3(&forged);
        let (header, _, signature) = split3(&token);
        assert_eq!(key.verify(&format!("{header}.{forged_claims}.{signature}"), at(1)), Err(TokenError::BadSignature));
        // `alg: none` with an empty signature.
        let none = format!("{}.{forged_claims}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
        assert_eq!(key.verify(&none, at(1)), Err(TokenError::BadSignature));
        assert_eq!(key.verify("not a token", at(1)), Err(TokenError::Malformed));
        assert_eq!(key.verify(&"a.".repeat(MAX_TOKEN_BYTES), at(1)), Err(TokenError::TooLong));
    }

    fn split3(token: &str) -> (&str, &str, &str) {
        let mut parts = token.split('.');
        (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap())
    }

    #[test]
    fn key_files_are_hex_of_at_least_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        std::fs::write(&path, encode_hex(&TokenKey::generate_secret().unwrap()) + "\n").unwrap();
        assert!(TokenKey::load(&path).is_ok());
        std::fs::write(&path, "abcd").unwrap();
        assert!(TokenKey::load(&path).is_err());
        std::fs::write(&path, "zz".repeat(32)).unwrap();
        assert!(TokenKey::load(&path).is_err());
    }
}
