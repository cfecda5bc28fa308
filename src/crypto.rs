//! The cryptography of wss's own state: webhook secrets sealed at rest, and control-plane tokens.
//!
//! **Secrets at rest.** When `WSS_ENCRYPTION_KEY` is set, every webhook secret is stored in Redis
//! sealed with XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`), as
//!
//! ```text
//! enc:v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>
//! ```
//!
//! - the key is 32 random bytes, configured as standard base64 (`openssl rand -base64 32`);
//! - the key id is the first 8 hex digits of SHA-256("wss key id" ‖ key): it tells "sealed with
//!   another key" apart from "tampered with", without revealing the key;
//! - the nonce is 24 random bytes per seal (XChaCha's nonce is large enough to draw at random);
//! - the associated data binds a sealed value to where it belongs (`webhook-secret:<webhook id>`),
//!   so a sealed secret copied onto another webhook does not open.
//!
//! A value without the `enc:` prefix is a secret stored in clear (before a key was configured); it
//! is read as it is and sealed at its next write. A sealed value with no key configured is an
//! error that says to set the key — wss never sends with a secret it cannot read.
//!
//! **Tokens.** A tenant token is `<token id>.<secret>`: `tok_` + 26 base32 characters (public,
//! names the token in ListTokens and logs) and 43 base64url characters (32 random bytes). Only the
//! SHA-256 digest of the whole token is stored; a presented token is hashed and compared with the
//! stored digest in constant time. The token is high-entropy, so an unsalted fast hash is the
//! right tool: there is nothing to brute-force.

use std::fmt;

use base64::Engine;
use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const SEALED_PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;
/// Token ids: `tok_` + this many base32 characters (130 bits).
const TOKEN_ID_RANDOM: usize = 26;
pub const TOKEN_ID_PREFIX: &str = "tok_";
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// What can go wrong with the encryption key or a sealed value. Messages never carry the key, a
/// secret or a ciphertext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("is not a valid key: {0}; generate one with `openssl rand -base64 32`")]
    BadKey(&'static str),
    #[error(
        "is sealed with key {stored}, but the configured WSS_ENCRYPTION_KEY has id {configured}; configure the key it was sealed with"
    )]
    WrongKey { stored: String, configured: String },
    #[error("is sealed, but no WSS_ENCRYPTION_KEY is configured; start wss with the key it was sealed with")]
    NoKey,
    #[error("does not open with the configured key (tampered with, or copied from another resource)")]
    Tampered,
    #[error("is not a well-formed sealed value ({0})")]
    Malformed(&'static str),
    #[error("cannot be sealed: the operating system's random number generator failed")]
    Random,
}

/// The key that seals webhook secrets at rest. `Debug` shows only the key id.
#[derive(Clone)]
pub struct SecretCipher {
    aead: XChaCha20Poly1305,
    key_id: String,
}

impl fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretCipher(key id {})", self.key_id)
    }
}

impl SecretCipher {
    /// Parses the configured key: standard base64 (padding optional, surrounding whitespace
    /// ignored) of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|_| CryptoError::BadKey("not standard base64"))?;
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::BadKey("it must decode to exactly 32 bytes"));
        }
        Ok(Self::from_bytes(&bytes))
    }

    fn from_bytes(key: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"wss key id");
        hasher.update(key);
        let key_id = hex(&hasher.finalize()[..4]);
        Self { aead: XChaCha20Poly1305::new_from_slice(key).expect("the key length was checked"), key_id }
    }

    /// 8 hex digits naming this key (not secret).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Seals `plaintext` for the place named by `context` (e.g. `webhook-secret:wh_…`).
    pub fn seal(&self, plaintext: &str, context: &str) -> Result<String, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let sealed = self
            .aead
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: context.as_bytes() })
            .map_err(|_| CryptoError::Random)?; // encryption fails only on absurd lengths
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}:{}", self.key_id, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)))
    }

    fn open_sealed(&self, rest: &str, context: &str) -> Result<String, CryptoError> {
        let (key_id, payload) = rest.split_once(':').ok_or(CryptoError::Malformed("no key id"))?;
        if key_id != self.key_id {
            return Err(CryptoError::WrongKey { stored: key_id.to_owned(), configured: self.key_id.clone() });
        }
        let bytes =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).map_err(|_| CryptoError::Malformed("not base64url"))?;
        if bytes.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed("too short"));
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let plain = self
            .aead
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: context.as_bytes() })
            .map_err(|_| CryptoError::Tampered)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Malformed("not UTF-8 inside"))
    }
}

/// True when a stored value is sealed (`enc:v1:…`) rather than in clear.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with("enc:")
}

/// Seals when a cipher is configured; otherwise the value is stored as it is.
pub fn seal(cipher: Option<&SecretCipher>, plaintext: &str, context: &str) -> Result<String, CryptoError> {
    match cipher {
        Some(cipher) => cipher.seal(plaintext, context),
        None => Ok(plaintext.to_owned()),
    }
}

/// Opens a stored value: sealed ones with the cipher, clear ones as they are.
pub fn open(cipher: Option<&SecretCipher>, stored: &str, context: &str) -> Result<String, CryptoError> {
    let Some(rest) = stored.strip_prefix("enc:") else { return Ok(stored.to_owned()) };
    let rest = rest.strip_prefix("v1:").ok_or(CryptoError::Malformed("unknown version"))?;
    match cipher {
        Some(cipher) => cipher.open_sealed(rest, context),
        None => Err(CryptoError::NoKey),
    }
}

// ---- tokens ----

/// A freshly issued token: its public id and the whole bearer value (shown once).
pub struct IssuedToken {
    pub id: String,
    pub token: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuedToken({}.***)", self.id)
    }
}

/// Draws a new token.
pub fn issue_token() -> Result<IssuedToken, getrandom::Error> {
    let mut random = [0u8; TOKEN_ID_RANDOM + 32];
    getrandom::fill(&mut random)?;
    let (id_bytes, secret) = random.split_at(TOKEN_ID_RANDOM);
    let mut id = String::from(TOKEN_ID_PREFIX);
    id.extend(id_bytes.iter().map(|b| BASE32[usize::from(b & 31)] as char));
    let token = format!("{id}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
    Ok(IssuedToken { id, token })
}

/// The token id of a presented tenant token, when it has the shape of one.
pub fn token_id_of(presented: &str) -> Option<&str> {
    let (id, secret) = presented.split_once('.')?;
    let random = id.strip_prefix(TOKEN_ID_PREFIX)?;
    let well_formed =
        random.len() == TOKEN_ID_RANDOM && random.bytes().all(|b| BASE32.contains(&b)) && !secret.is_empty() && secret.len() <= 128;
    well_formed.then_some(id)
}

/// True when `value` is shaped like a token id (`tok_` + 26 base32 characters).
pub fn is_token_id(value: &str) -> bool {
    value.strip_prefix(TOKEN_ID_PREFIX).is_some_and(|r| r.len() == TOKEN_ID_RANDOM && r.bytes().all(|b| BASE32.contains(&b)))
}

/// SHA-256 of a token, as stored.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The digest as stored in Redis: lowercase hex.
pub fn token_digest_hex(token: &str) -> String {
    hex(&token_digest(token))
}

/// Compares a presented token with a stored hex digest in constant time (the digests have a
/// fixed length, so neither the token's bytes nor its length leak through timing).
pub fn token_matches(presented: &str, stored_hex: &str) -> bool {
    let presented = token_digest_hex(presented);
    presented.len() == stored_hex.len() && bool::from(presented.as_bytes().ct_eq(stored_hex.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // bytes 0..=31

    #[test]
    fn keys_are_32_bytes_of_base64() {
        let cipher = SecretCipher::from_base64(KEY).unwrap();
        assert_eq!(cipher.key_id().len(), 8);
        assert!(SecretCipher::from_base64(KEY.trim_end_matches('=')).is_ok(), "padding is optional");
        assert!(SecretCipher::from_base64(&format!("  {KEY}\n")).is_ok(), "whitespace is ignored");
        assert_eq!(
            SecretCipher::from_base64("AAECAwQFBgcICQoLDA0ODw==").unwrap_err(),
            CryptoError::BadKey("it must decode to exactly 32 bytes")
        );
        assert_eq!(SecretCipher::from_base64("not base64 at all!").unwrap_err(), CryptoError::BadKey("not standard base64"));
        assert!(!format!("{cipher:?}").contains(KEY));
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_context() {
        let cipher = SecretCipher::from_base64(KEY).unwrap();
        let secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=";
        let sealed = cipher.seal(secret, "webhook-secret:wh_a").unwrap();
        assert!(sealed.starts_with(&format!("enc:v1:{}:", cipher.key_id())), "{sealed}");
        assert!(!sealed.contains("c2VjcmV0"), "the secret must not show through: {sealed}");
        assert_ne!(sealed, cipher.seal(secret, "webhook-secret:wh_a").unwrap(), "a fresh nonce per seal");
        assert_eq!(open(Some(&cipher), &sealed, "webhook-secret:wh_a").unwrap(), secret);
        assert_eq!(open(Some(&cipher), &sealed, "webhook-secret:wh_b").unwrap_err(), CryptoError::Tampered);
        assert_eq!(open(None, &sealed, "webhook-secret:wh_a").unwrap_err(), CryptoError::NoKey);

        let other = SecretCipher::from_base64(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])).unwrap();
        assert!(matches!(open(Some(&other), &sealed, "webhook-secret:wh_a"), Err(CryptoError::WrongKey { .. })));

        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(open(Some(&cipher), &tampered, "webhook-secret:wh_a").unwrap_err(), CryptoError::Tampered);
        assert!(matches!(open(Some(&cipher), "enc:v1:xx", "c"), Err(CryptoError::Malformed(_))));
        assert!(matches!(open(Some(&cipher), "enc:v9:xx:yy", "c"), Err(CryptoError::Malformed(_))));
    }

    #[test]
    fn clear_values_pass_through() {
        let cipher = SecretCipher::from_base64(KEY).unwrap();
        assert_eq!(open(Some(&cipher), "whsec_plain", "c").unwrap(), "whsec_plain");
        assert_eq!(open(None, "whsec_plain", "c").unwrap(), "whsec_plain");
        assert_eq!(seal(None, "whsec_plain", "c").unwrap(), "whsec_plain");
        assert!(is_sealed(&seal(Some(&cipher), "whsec_plain", "c").unwrap()));
    }

    #[test]
    fn errors_never_carry_the_secret_or_key() {
        let cipher = SecretCipher::from_base64(KEY).unwrap();
        let sealed = cipher.seal("whsec_do-not-show-0123456789", "a").unwrap();
        for err in [open(Some(&cipher), &sealed, "b").unwrap_err(), open(None, &sealed, "a").unwrap_err()] {
            let text = err.to_string();
            assert!(!text.contains("do-not-show") && !text.contains(KEY) && !text.contains(&sealed[12..]), "{text}");
        }
    }

    #[test]
    fn tokens_have_an_id_and_are_checked_by_digest() {
        let issued = issue_token().unwrap();
        assert!(is_token_id(&issued.id), "{}", issued.id);
        assert_eq!(token_id_of(&issued.token), Some(issued.id.as_str()));
        assert!(issued.token.len() > 60);
        let stored = token_digest_hex(&issued.token);
        assert_eq!(stored.len(), 64);
        assert!(token_matches(&issued.token, &stored));
        assert!(!token_matches(&format!("{}x", issued.token), &stored));
        assert!(!token_matches(&issued.token, "short"));
        assert!(!format!("{issued:?}").contains(&issued.token[issued.id.len() + 1..]));
        let other = issue_token().unwrap();
        assert_ne!(issued.id, other.id);
        for bad in ["", "tok_.x", "tok_abc.x", "admin-token-0123456789", &format!("{}.", issued.id), &format!("TOK_{}", &issued.token[4..])]
        {
            assert_eq!(token_id_of(bad), None, "{bad}");
        }
    }
}
