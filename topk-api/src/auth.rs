//! Who is calling, and whom they may read.
//!
//! With `auth_mode = off` every caller may read every user (local use). Otherwise a request
//! carries `Authorization: Bearer <JWT>`, signed with HS256 (shared secret) or RS256 (the
//! server holds the public key); `exp` and `sub` are required, `iss`/`aud` are checked when
//! configured. A token may read its own user (`sub`), and any user when its space-separated
//! `scope` claim contains [`READ_ANY_SCOPE`]. A missing or invalid token is a 401; a valid
//! token reading someone else without that scope is a 403.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use topk_core::event::check_id;

use crate::config::{ApiConfig, AuthMode};
use crate::error::AppError;
use crate::AppState;

/// The scope that lets a token read any user.
pub const READ_ANY_SCOPE: &str = "topk:read:any";

/// Verifies tokens, per the configured mode.
pub enum Authenticator {
    Off,
    Jwt {
        key: Box<DecodingKey>,
        validation: Box<Validation>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("auth_mode = hs256 needs jwt_hs256_secret")]
    MissingSecret,
    #[error("auth_mode = rs256 needs jwt_rs256_public_key_file")]
    MissingPublicKey,
    #[error("cannot read the RS256 public key {path}")]
    ReadPublicKey {
        path: String,
        source: std::io::Error,
    },
    #[error("the RS256 public key {path} is not an RSA public key in PEM")]
    ParsePublicKey {
        path: String,
        source: jsonwebtoken::errors::Error,
    },
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => formatter.write_str("Authenticator::Off"),
            Self::Jwt { validation, .. } => formatter
                .debug_struct("Authenticator::Jwt")
                .field("algorithms", &validation.algorithms)
                .finish_non_exhaustive(),
        }
    }
}

impl Authenticator {
    pub fn from_config(config: &ApiConfig) -> Result<Self, AuthConfigError> {
        let (key, algorithm) = match config.auth_mode {
            AuthMode::Off => return Ok(Self::Off),
            AuthMode::Hs256 => {
                let secret = &config.jwt_hs256_secret;
                if secret.is_empty() {
                    return Err(AuthConfigError::MissingSecret);
                }
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                )
            }
            AuthMode::Rs256 => {
                let path = &config.jwt_rs256_public_key_file;
                if path.is_empty() {
                    return Err(AuthConfigError::MissingPublicKey);
                }
                let pem = std::fs::read(path).map_err(|source| AuthConfigError::ReadPublicKey {
                    path: path.clone(),
                    source,
                })?;
                let key = DecodingKey::from_rsa_pem(&pem).map_err(|source| {
                    AuthConfigError::ParsePublicKey {
                        path: path.clone(),
                        source,
                    }
                })?;
                (key, Algorithm::RS256)
            }
        };
        let mut validation = Validation::new(algorithm);
        // A configured issuer or audience must also be present, not only match when present.
        let mut required_claims = vec!["exp", "sub"];
        validation.validate_aud = config.jwt_audience().is_some();
        if let Some(audience) = config.jwt_audience() {
            validation.set_audience(&[audience]);
            required_claims.push("aud");
        }
        if let Some(issuer) = config.jwt_issuer() {
            validation.set_issuer(&[issuer]);
            required_claims.push("iss");
        }
        validation.set_required_spec_claims(&required_claims);
        Ok(Self::Jwt {
            key: Box::new(key),
            validation: Box::new(validation),
        })
    }

    /// The caller of a request with these headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AppError> {
        let Self::Jwt { key, validation } = self else {
            return Ok(Caller::Anyone);
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(AppError::Unauthenticated(
                "missing Authorization: Bearer token".to_owned(),
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|text| {
                let (scheme, token) = text.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| {
                AppError::Unauthenticated("Authorization must be `Bearer <token>`".to_owned())
            })?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|error| AppError::Unauthenticated(format!("invalid token: {error}")))?
            .claims;
        check_id("sub", &claims.sub).map_err(|rejection| {
            AppError::Unauthenticated(format!("invalid token: {}", rejection.detail))
        })?;
        let reads_any = claims
            .scope
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .any(|scope| scope == READ_ANY_SCOPE);
        Ok(Caller::User {
            subject: claims.sub,
            reads_any,
        })
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<String>,
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off: may read anyone, is no one.
    Anyone,
    User {
        subject: String,
        reads_any: bool,
    },
}

impl Caller {
    /// Whether this caller may read `user_id`'s top songs.
    pub fn authorize(&self, user_id: &str) -> Result<(), AppError> {
        match self {
            Self::Anyone => Ok(()),
            Self::User {
                subject, reads_any, ..
            } if *reads_any || subject == user_id => Ok(()),
            Self::User { .. } => Err(AppError::Forbidden(format!(
                "this token may read its own user only (or any user with scope {READ_ANY_SCOPE})"
            ))),
        }
    }

    /// The user a token speaks for (`/v1/me`).
    pub fn own_user(&self) -> Result<&str, AppError> {
        match self {
            Self::Anyone => Err(AppError::AuthDisabled),
            Self::User { subject, .. } => Ok(subject),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        state.authenticator().authenticate(&parts.headers)
    }
}
