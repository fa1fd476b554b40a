//! The two signed tokens the providers want, built by hand on ring (the
//! format is small and fixed; RFC 7515 compact serialization, base64url
//! without padding):
//!
//! - APNs provider tokens: ES256, header `{alg, kid}`, claims `{iss, iat}`,
//!   the signature raw `r || s` (64 bytes), not DER.
//! - Google's OAuth JWT-bearer assertion: RS256, header `{alg, typ}`,
//!   claims `{iss, scope, aud, iat, exp}`.

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};

use crate::PushError;

/// base64url without padding (RFC 4648 §5, as RFC 7515 wants).
pub fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes base64url without padding; `None` on anything else.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        // The bits past the data must be zero (one encoding per value).
        let unused = match chunk.len() {
            2 => n & 0xffff,
            3 => n & 0xff,
            _ => 0,
        };
        if unused != 0 {
            return None;
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

/// The DER contents of the first PEM block in `pem` (a `.p8` key, a
/// service account's `private_key`).
pub fn pem_der(pem: &str) -> Result<Vec<u8>, PushError> {
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    match rustls_pemfile::read_one(&mut reader) {
        Ok(Some(rustls_pemfile::Item::Pkcs8Key(k))) => Ok(k.secret_pkcs8_der().to_vec()),
        Ok(Some(_)) => Err(PushError::Key("not a PKCS#8 private key".into())),
        Ok(None) => Err(PushError::Key("no PEM block".into())),
        Err(e) => Err(PushError::Key(e.to_string())),
    }
}

/// An ES256 signer (an APNs `.p8` key).
pub struct Es256(EcdsaKeyPair);

impl Es256 {
    /// From a PKCS#8 PEM key, as Apple hands it out.
    pub fn from_pem(pem: &str) -> Result<Es256, PushError> {
        let der = pem_der(pem)?;
        EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &SystemRandom::new(),
        )
        .map(Es256)
        .map_err(|e| PushError::Key(format!("not a P-256 key: {e}")))
    }

    /// `header.claims.signature`.
    pub fn sign(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, PushError> {
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self
            .0
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| PushError::Key("signing failed".into()))?;
        Ok(format!("{input}.{}", b64url(sig.as_ref())))
    }
}

/// An RS256 signer (a Google service account's key).
pub struct Rs256(RsaKeyPair);

impl Rs256 {
    /// From a PKCS#8 PEM key.
    pub fn from_pem(pem: &str) -> Result<Rs256, PushError> {
        let der = pem_der(pem)?;
        RsaKeyPair::from_pkcs8(&der)
            .map(Rs256)
            .map_err(|e| PushError::Key(format!("not an RSA key: {e}")))
    }

    /// `header.claims.signature`.
    pub fn sign(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, PushError> {
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; self.0.public().modulus_len()];
        self.0
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| PushError::Key("signing failed".into()))?;
        Ok(format!("{input}.{}", b64url(&sig)))
    }
}

/// A compact JWS split and decoded: header, claims, the signed input and
/// the signature. `None` if it is not three base64url parts of JSON.
pub fn parse(token: &str) -> Option<(serde_json::Value, serde_json::Value, String, Vec<u8>)> {
    let mut parts = token.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header = serde_json::from_slice(&b64url_decode(h)?).ok()?;
    let claims = serde_json::from_slice(&b64url_decode(c)?).ok()?;
    Some((header, claims, format!("{h}.{c}"), b64url_decode(s)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips_and_matches_rfc_4648() {
        // RFC 4648 §10 vectors, unpadded.
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64url(raw.as_bytes()), enc);
            assert_eq!(b64url_decode(enc).unwrap(), raw.as_bytes());
        }
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(b64url_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert!(b64url_decode("ab=c").is_none());
        assert!(b64url_decode("abcde").is_none());
        // Non-zero bits past the data: not the canonical encoding.
        assert!(b64url_decode("Zh").is_none());
    }
}
