//! Token verification and minting. Tokens are JWTs carrying who the user is, what they may do
//! and which rooms they may join. HS256 with a shared secret suits development and simple
//! deployments; RS256/EdDSA public-key verification lets a platform sign tokens without
//! sharing a secret with Ferry.

use crate::config::AuthConfig;
use ferry_client::protocol::{CloseCode, Role, RoomId, UserId, UserRef};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The claims Ferry reads from a token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Display name shown in rooms; defaults to the user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: Role,
    /// Room id, or a pattern where `*` matches any run of characters (`shop-42-*`, `*`).
    pub room: String,
    /// Preferred language (BCP 47, e.g. "en", "zh").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// Market the viewer buys from ("us", "hk", "mo"...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    pub fn user_id(&self) -> UserId {
        UserId(self.sub.clone())
    }

    pub fn user_ref(&self) -> UserRef {
        UserRef {
            id: self.user_id(),
            name: self.name.clone().unwrap_or_else(|| self.sub.clone()),
            role: self.role,
        }
    }

    /// Whether this token lets its holder into `room`.
    pub fn allows_room(&self, room: &RoomId) -> bool {
        glob_match(self.room.as_bytes(), room.as_str().as_bytes())
    }
}

/// `*` matches any run of bytes; everything else matches itself. Iterative with one
/// backtrack point, so it is linear-ish and cannot blow up on hostile patterns.
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token (send `Authorization: Bearer <jwt>` or `?token=<jwt>`)")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl AuthError {
    /// The WebSocket close code for this refusal (always terminal).
    pub fn close_code(&self) -> CloseCode {
        match self {
            AuthError::Expired => CloseCode::TokenExpired,
            AuthError::Missing | AuthError::Invalid(_) => CloseCode::InvalidToken,
        }
    }
}

/// Why a key could not be set up from configuration.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read auth.public_key_file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("auth.public_key_file {path} is not a {alg} PEM public key: {message}")]
    Pem {
        path: String,
        alg: String,
        message: String,
    },
    #[error("auth.hs256_secret is empty: `ferry token` needs it to sign tokens")]
    NoSecret,
}

/// Verifies tokens with every configured key.
pub struct Verifier {
    keys: Vec<(DecodingKey, Validation)>,
}

impl Verifier {
    pub fn from_config(cfg: &AuthConfig) -> Result<Verifier, KeyError> {
        let mut keys = Vec::new();
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.leeway = cfg.leeway.as_secs();
            v.set_required_spec_claims(&["exp"]);
            if !cfg.issuer.is_empty() {
                v.set_issuer(&[cfg.issuer.as_str()]);
            }
            if cfg.audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&[cfg.audience.as_str()]);
            }
            v
        };
        if !cfg.hs256_secret.is_empty() {
            keys.push((
                DecodingKey::from_secret(cfg.hs256_secret.as_bytes()),
                validation(Algorithm::HS256),
            ));
        }
        if !cfg.public_key_file.as_os_str().is_empty() {
            let path = cfg.public_key_file.display().to_string();
            let pem = std::fs::read(&cfg.public_key_file).map_err(|source| KeyError::Read {
                path: path.clone(),
                source,
            })?;
            let pem_err = |e: jsonwebtoken::errors::Error| KeyError::Pem {
                path: path.clone(),
                alg: cfg.public_key_alg.clone(),
                message: e.to_string(),
            };
            let (key, alg) = if cfg.public_key_alg == "EdDSA" {
                (
                    DecodingKey::from_ed_pem(&pem).map_err(pem_err)?,
                    Algorithm::EdDSA,
                )
            } else {
                (
                    DecodingKey::from_rsa_pem(&pem).map_err(pem_err)?,
                    Algorithm::RS256,
                )
            };
            keys.push((key, validation(alg)));
        }
        Ok(Verifier { keys })
    }

    /// Verify a token's signature, expiry, issuer and audience.
    pub fn verify(&self, token: Option<&str>) -> Result<Claims, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let mut last = AuthError::Invalid(format!("no key configured for {:?}", header.alg));
        for (key, validation) in &self.keys {
            if !validation.algorithms.contains(&header.alg) {
                continue;
            }
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                        _ => AuthError::Invalid(e.to_string()),
                    }
                }
            }
        }
        Err(last)
    }
}

/// What `ferry token` and tests need to mint a token.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub room: String,
    pub user: String,
    pub name: Option<String>,
    pub role: Role,
    pub lang: Option<String>,
    pub market: Option<String>,
    pub ttl: Duration,
}

/// Mint an HS256 token with the configured secret (development and scripts).
pub fn mint(cfg: &AuthConfig, req: &TokenRequest) -> Result<String, KeyError> {
    if cfg.hs256_secret.is_empty() {
        return Err(KeyError::NoSecret);
    }
    let now = unix_now();
    let claims = Claims {
        sub: req.user.clone(),
        name: req.name.clone(),
        role: req.role,
        room: req.room.clone(),
        lang: req.lang.clone(),
        market: req.market.clone(),
        exp: now + req.ttl.as_secs(),
        iat: Some(now),
        iss: (!cfg.issuer.is_empty()).then(|| cfg.issuer.clone()),
        aud: (!cfg.audience.is_empty()).then(|| cfg.audience.clone()),
    };
    mint_claims(cfg.hs256_secret.as_bytes(), &claims)
}

/// Sign arbitrary claims with an HS256 secret.
pub fn mint_claims(secret: &[u8], claims: &Claims) -> Result<String, KeyError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|_| KeyError::NoSecret)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AuthConfig {
        AuthConfig::default()
    }

    fn req(room: &str) -> TokenRequest {
        TokenRequest {
            room: room.into(),
            user: "u1".into(),
            name: Some("Ann".into()),
            role: Role::Viewer,
            lang: Some("en".into()),
            market: Some("us".into()),
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn minted_tokens_verify_and_carry_claims() {
        let token = mint(&cfg(), &req("shop-*")).expect("mint");
        let claims = Verifier::from_config(&cfg())
            .expect("verifier")
            .verify(Some(&token))
            .expect("verifies");
        assert_eq!(claims.user_ref().name, "Ann");
        assert!(claims.allows_room(&"shop-42".into()));
        assert!(!claims.allows_room(&"other".into()));
    }

    #[test]
    fn forged_expired_and_missing_tokens_are_refused() {
        let v = Verifier::from_config(&cfg()).expect("verifier");
        let mut forged_cfg = cfg();
        forged_cfg.hs256_secret = "not-the-secret".into();
        let forged = mint(&forged_cfg, &req("r")).expect("mint");
        assert!(matches!(
            v.verify(Some(&forged)),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(v.verify(None), Err(AuthError::Missing)));
        assert!(matches!(
            v.verify(Some("garbage")),
            Err(AuthError::Invalid(_))
        ));
        let mut claims = v
            .verify(Some(&mint(&cfg(), &req("r")).expect("mint")))
            .expect("valid");
        claims.exp = unix_now() - 3600;
        let expired = mint_claims(cfg().hs256_secret.as_bytes(), &claims).expect("mint");
        let err = v.verify(Some(&expired)).expect_err("expired");
        assert_eq!(err.close_code(), CloseCode::TokenExpired);
    }

    #[test]
    fn glob_patterns() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"a*c", b"abbbc"));
        assert!(glob_match(b"room", b"room"));
        assert!(!glob_match(b"room", b"room2"));
        assert!(!glob_match(b"a*c", b"abbb"));
        assert!(glob_match(b"*-live-*", b"shop-live-7"));
        // Hostile pattern stays fast.
        let text = vec![b'a'; 5000];
        assert!(!glob_match(b"*a*a*a*a*a*b", &text));
    }
}
