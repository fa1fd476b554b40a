//! Access tokens: JSON Web Tokens (RFC 7519) that an app's backend mints
//! with any JWT library, or that the broker mints itself from its own
//! secret (`courier token`). Parsing and claim checks are jsonwebtoken's;
//! its signatures run on ring through the provider below, so no second
//! crypto library (aws-lc, RustCrypto) enters the build.

use std::collections::HashMap;

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{self as sig, UnparsedPublicKey};
use ring::{hmac, rand};
use serde::{Deserialize, Serialize};

use crate::config::{KeyAlgorithm, TokenConfig};

/// What a token says: who (user and device), until when, and for whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// The user's device.
    pub dev: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Audience, if the issuer named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, a bad signature, a missing claim or a wrong audience.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Its `kid` names no configured key (or it has none and there are
    /// several).
    #[error("unknown key id {0:?}")]
    UnknownKey(Option<String>),
    /// Past its `exp`.
    #[error("token expired")]
    Expired,
    /// A key in the configuration cannot be used.
    #[error("key {kid:?}: {why}")]
    BadKey {
        /// The key's id.
        kid: String,
        /// What is wrong with it.
        why: String,
    },
    /// No secret to mint with.
    #[error("no signing secret configured")]
    NoSecret,
}

struct Key {
    alg: Algorithm,
    decoding: DecodingKey,
}

/// The keys tokens are checked against, by key id, and the secret the
/// broker mints with.
pub struct Tokens {
    keys: HashMap<String, Key>,
    minting: Option<(String, EncodingKey, DecodingKey)>,
    audience: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// The keys of `config`: its public keys and shared secrets, and the
    /// broker's own secret (`secret`, if given), under key id
    /// `config.secret_kid`.
    pub fn new(config: &TokenConfig, secret: Option<&[u8]>) -> Result<Tokens, TokenError> {
        install_provider();
        let mut keys = HashMap::new();
        for k in &config.keys {
            let bad = |why: String| TokenError::BadKey {
                kid: k.kid.clone(),
                why,
            };
            let (alg, decoding) = match k.alg {
                KeyAlgorithm::HS256 => {
                    let s = k
                        .secret
                        .as_deref()
                        .ok_or_else(|| bad("HS256 needs `secret`".into()))?;
                    let key =
                        DecodingKey::from_secret(s.as_bytes()).map_err(|e| bad(e.to_string()))?;
                    (Algorithm::HS256, key)
                }
                KeyAlgorithm::ES256 | KeyAlgorithm::EdDSA => {
                    let path = k
                        .public_key_file
                        .as_deref()
                        .ok_or_else(|| bad("needs `public_key_file` (PEM)".into()))?;
                    let pem =
                        std::fs::read(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
                    let key = if k.alg == KeyAlgorithm::ES256 {
                        DecodingKey::from_ec_pem(&pem)
                    } else {
                        DecodingKey::from_ed_pem(&pem)
                    };
                    let alg = if k.alg == KeyAlgorithm::ES256 {
                        Algorithm::ES256
                    } else {
                        Algorithm::EdDSA
                    };
                    (alg, key.map_err(|e| bad(e.to_string()))?)
                }
            };
            keys.insert(k.kid.clone(), Key { alg, decoding });
        }
        let minting = match secret {
            Some(s) => {
                let bad = |e: jsonwebtoken::errors::Error| TokenError::BadKey {
                    kid: config.secret_kid.clone(),
                    why: e.to_string(),
                };
                Some((
                    config.secret_kid.clone(),
                    EncodingKey::from_secret(s).map_err(bad)?,
                    DecodingKey::from_secret(s).map_err(bad)?,
                ))
            }
            None => None,
        };
        if let Some((kid, _, d)) = &minting {
            keys.insert(
                kid.clone(),
                Key {
                    alg: Algorithm::HS256,
                    decoding: d.clone(),
                },
            );
        }
        Ok(Tokens {
            keys,
            minting,
            audience: config.audience.clone(),
            leeway: config.leeway_secs,
        })
    }

    /// Checks `token`'s signature and claims at time `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let invalid = |e: jsonwebtoken::errors::Error| TokenError::Invalid(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let key = match &header.kid {
            Some(kid) => self.keys.get(kid),
            None if self.keys.len() == 1 => self.keys.values().next(),
            None => None,
        }
        .ok_or_else(|| TokenError::UnknownKey(header.kid.clone()))?;
        // The key decides the algorithm, never the token's header.
        let mut v = Validation::new(key.alg);
        v.validate_exp = false; // checked below against `now`
        v.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(a) => {
                v.set_audience(&[a]);
                v.required_spec_claims.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &v).map_err(invalid)?;
        if data.claims.exp.saturating_add(self.leeway) <= now {
            return Err(TokenError::Expired);
        }
        Ok(data.claims)
    }

    /// A token for `user`'s `device`, valid for `ttl_secs` from `now`,
    /// signed with the broker's own secret.
    pub fn mint(
        &self,
        user: &str,
        device: &str,
        now: u64,
        ttl_secs: u64,
    ) -> Result<String, TokenError> {
        self.sign(user, device, now, ttl_secs)
    }

    fn sign(&self, sub: &str, dev: &str, now: u64, ttl_secs: u64) -> Result<String, TokenError> {
        let (kid, key, _) = self.minting.as_ref().ok_or(TokenError::NoSecret)?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        let claims = Claims {
            sub: sub.to_owned(),
            dev: dev.to_owned(),
            exp: now + ttl_secs,
            iat: now,
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&header, &claims, key).map_err(|e| TokenError::Invalid(e.to_string()))
    }
}

// ---- ring as jsonwebtoken's crypto provider (HS256, ES256, EdDSA) ----

fn install_provider() {
    static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory: new_signer,
        verifier_factory: new_verifier,
        key_utils: KeyUtils {
            rsa_pub_components_from_private_key: |_| Err(ErrorKind::UnsupportedAlgorithm.into()),
            rsa_pub_components_from_public_key: |_| Err(ErrorKind::UnsupportedAlgorithm.into()),
            ec_pub_components_from_private_key: |_, _| Err(ErrorKind::UnsupportedAlgorithm.into()),
            ed_pub_components_from_private_key: |_, _| Err(ErrorKind::UnsupportedAlgorithm.into()),
            compute_digest,
        },
    };
    // Err: installed already (by us, or by the embedding application).
    let _ = PROVIDER.install_default();
}

fn compute_digest(data: &[u8], h: ThumbprintHash) -> jsonwebtoken::errors::Result<Vec<u8>> {
    let alg = match h {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(ring::digest::digest(alg, data).as_ref().to_vec())
}

type JwtResult<T> = jsonwebtoken::errors::Result<T>;

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> JwtResult<Box<dyn JwtSigner>> {
    let rng = rand::SystemRandom::new();
    Ok(match alg {
        Algorithm::HS256 => Box::new(Hmac(hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()))),
        Algorithm::ES256 => Box::new(Es256Signer(
            sig::EcdsaKeyPair::from_pkcs8(
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                key.as_bytes(),
                &rng,
            )
            .map_err(|_| ErrorKind::InvalidEcdsaKey)?,
            rng,
        )),
        Algorithm::EdDSA => Box::new(EdSigner(
            sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(key.as_bytes())
                .map_err(|_| ErrorKind::InvalidEddsaKey)?,
        )),
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    })
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> JwtResult<Box<dyn JwtVerifier>> {
    let bytes = key.try_get_as_bytes()?.to_vec();
    Ok(match alg {
        Algorithm::HS256 => Box::new(Hmac(hmac::Key::new(hmac::HMAC_SHA256, &bytes))),
        Algorithm::ES256 => Box::new(PublicKey(
            Algorithm::ES256,
            &sig::ECDSA_P256_SHA256_FIXED,
            bytes,
        )),
        Algorithm::EdDSA => Box::new(PublicKey(Algorithm::EdDSA, &sig::ED25519, bytes)),
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    })
}

struct Hmac(hmac::Key);

impl signature::Signer<Vec<u8>> for Hmac {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(hmac::sign(&self.0, msg).as_ref().to_vec())
    }
}

impl JwtSigner for Hmac {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl signature::Verifier<Vec<u8>> for Hmac {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        // Constant time.
        hmac::verify(&self.0, msg, signature).map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Hmac {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

struct Es256Signer(sig::EcdsaKeyPair, rand::SystemRandom);

impl signature::Signer<Vec<u8>> for Es256Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let s = self
            .0
            .sign(&self.1, msg)
            .map_err(|_| signature::Error::new())?;
        Ok(s.as_ref().to_vec())
    }
}

impl JwtSigner for Es256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

struct EdSigner(sig::Ed25519KeyPair);

impl signature::Signer<Vec<u8>> for EdSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(self.0.sign(msg).as_ref().to_vec())
    }
}

impl JwtSigner for EdSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

/// A public key (ES256: the uncompressed P-256 point; EdDSA: the 32-byte
/// Ed25519 key), as jsonwebtoken extracts it from PEM.
struct PublicKey(Algorithm, &'static dyn sig::VerificationAlgorithm, Vec<u8>);

impl signature::Verifier<Vec<u8>> for PublicKey {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        UnparsedPublicKey::new(self.1, &self.2)
            .verify(msg, signature)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for PublicKey {
    fn algorithm(&self) -> Algorithm {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyConfig;

    fn config(keys: Vec<KeyConfig>, audience: Option<&str>) -> TokenConfig {
        TokenConfig {
            keys,
            audience: audience.map(Into::into),
            ..TokenConfig::default()
        }
    }

    #[test]
    fn minted_tokens_verify_and_carry_their_claims() {
        let t = Tokens::new(&config(vec![], None), Some(b"s3cret")).unwrap();
        let tok = t.mint("alice", "phone", 1000, 60).unwrap();
        let c = t.verify(&tok, 1010).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.dev.as_str(), c.exp),
            ("alice", "phone", 1060)
        );
        assert_eq!(t.verify(&tok, 1060), Err(TokenError::Expired));
    }

    #[test]
    fn tampered_and_foreign_tokens_are_refused() {
        let t = Tokens::new(&config(vec![], None), Some(b"s3cret")).unwrap();
        let other = Tokens::new(&config(vec![], None), Some(b"other")).unwrap();
        let tok = t.mint("alice", "phone", 1000, 60).unwrap();
        assert!(matches!(
            t.verify(&other.mint("alice", "phone", 1000, 60).unwrap(), 1001),
            Err(TokenError::Invalid(_))
        ));
        // Swap the claims for bob's, keep alice's signature.
        let bob = t.mint("bob", "phone", 1000, 60).unwrap();
        let parts: Vec<&str> = tok.split('.').collect();
        let bob_claims = bob.split('.').nth(1).unwrap();
        let forged = format!("{}.{}.{}", parts[0], bob_claims, parts[2]);
        assert!(matches!(
            t.verify(&forged, 1001),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            t.verify("not a token", 1001),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn audience_is_required_when_configured() {
        let no_aud = Tokens::new(&config(vec![], None), Some(b"k")).unwrap();
        let with_aud = Tokens::new(&config(vec![], Some("chat.example")), Some(b"k")).unwrap();
        let tok = no_aud.mint("alice", "phone", 1000, 60).unwrap();
        assert!(matches!(
            with_aud.verify(&tok, 1001),
            Err(TokenError::Invalid(_))
        ));
        let tok = with_aud.mint("alice", "phone", 1000, 60).unwrap();
        assert!(with_aud.verify(&tok, 1001).is_ok());
    }

    #[test]
    fn the_key_id_picks_the_key_and_the_key_picks_the_algorithm() {
        let keys = vec![
            KeyConfig {
                kid: "a".into(),
                alg: KeyAlgorithm::HS256,
                secret: Some("alpha".into()),
                public_key_file: None,
            },
            KeyConfig {
                kid: "b".into(),
                alg: KeyAlgorithm::HS256,
                secret: Some("beta".into()),
                public_key_file: None,
            },
        ];
        let t = Tokens::new(&config(keys, None), None).unwrap();
        let sign = |kid: Option<&str>, secret: &[u8]| {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = kid.map(Into::into);
            let c = Claims {
                sub: "u".into(),
                dev: "d".into(),
                exp: 2000,
                iat: 1000,
                aud: None,
            };
            jsonwebtoken::encode(&h, &c, &EncodingKey::from_secret(secret).unwrap()).unwrap()
        };
        assert!(t.verify(&sign(Some("a"), b"alpha"), 1001).is_ok());
        assert!(t.verify(&sign(Some("b"), b"beta"), 1001).is_ok());
        assert!(matches!(
            t.verify(&sign(Some("a"), b"beta"), 1001),
            Err(TokenError::Invalid(_))
        ));
        assert_eq!(
            t.verify(&sign(Some("c"), b"beta"), 1001),
            Err(TokenError::UnknownKey(Some("c".into())))
        );
        assert_eq!(
            t.verify(&sign(None, b"beta"), 1001),
            Err(TokenError::UnknownKey(None))
        );
        assert!(t.mint("u", "d", 0, 1).is_err());
    }
}
