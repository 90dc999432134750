//! Who is calling, and whom they may read.
//!
//! With `auth_mode = off` every caller may read every user (local use). Otherwise a request
//! carries `Authorization: Bearer <JWT>`, signed with HS256 (shared secret of at least 32
//! bytes) or RS256 (the server holds the public key); `exp` and `sub` are required, `nbf` is
//! checked when present (both with jsonwebtoken's 60 s leeway for clock skew), `iss` is
//! checked when configured, and `aud` is checked against `jwt_audience`, which must be set
//! unless `jwt_allow_any_audience` says otherwise. A token may read its own user (`sub`), and
//! any user when its `scope` or `scp` claim (a space-separated string or an array of strings)
//! contains [`READ_ANY_SCOPE`].
//!
//! `topk-ingest` verifies its tokens with the same [`Authenticator`] (built from its own
//! options through [`JwtSettings`]) and checks its own scope with [`Caller::has_scope`].
//!
//! A missing or invalid token is a 401 whose body says only "missing or invalid bearer
//! token": which check failed is logged here, never sent. A valid token reading someone else
//! without the scope is a 403. Both carry an RFC 6750 `WWW-Authenticate: Bearer` challenge
//! ([`BearerError::challenge`], [`INSUFFICIENT_SCOPE_CHALLENGE`]).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use topk_core::event::check_id;

use crate::config::{ApiConfig, AuthMode};
use crate::error::AppError;
use crate::AppState;

/// The scope that lets a token read any user.
pub const READ_ANY_SCOPE: &str = "topk:read:any";

/// The shortest HS256 secret accepted, in bytes: RFC 7518 §3.2 wants a key at least as long
/// as the hash output (256 bits).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// The `WWW-Authenticate` value of a 403: the token is valid but lacks [`READ_ANY_SCOPE`]
/// (RFC 6750 §3.1 `insufficient_scope`).
pub const INSUFFICIENT_SCOPE_CHALLENGE: &str =
    "Bearer realm=\"topk\", error=\"insufficient_scope\", scope=\"topk:read:any\"";

/// Why a request is a 401, as far as the client is told (RFC 6750 §3.1): whether it sent a
/// bearer token at all. Which check a token failed is logged, not told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// No `Authorization` header, or one with another scheme (e.g. `Basic`): the request
    /// lacks bearer authentication, so the challenge carries no error attribute.
    Missing,
    /// A bearer token that is malformed, wrongly signed, expired, not yet valid (`nbf`), for
    /// another issuer or audience, or without a usable `sub`.
    InvalidToken,
}

impl BearerError {
    /// The `WWW-Authenticate` value of the 401.
    pub fn challenge(self) -> &'static str {
        match self {
            Self::Missing => "Bearer realm=\"topk\"",
            Self::InvalidToken => "Bearer realm=\"topk\", error=\"invalid_token\"",
        }
    }
}

/// Verifies tokens, per the configured mode.
pub enum Authenticator {
    Off,
    Jwt {
        key: Box<DecodingKey>,
        validation: Box<Validation>,
    },
}

/// What an [`Authenticator`] is built from: the JWT options of a binary's config, and the
/// prefix of their env vars (`TOPK_API`, `TOPK_INGEST`) for the startup error messages.
#[derive(Debug, Clone, Copy)]
pub struct JwtSettings<'a> {
    pub env_prefix: &'static str,
    pub auth_mode: AuthMode,
    pub hs256_secret: &'a str,
    pub rs256_public_key_file: &'a str,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub allow_any_audience: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("auth_mode = hs256 needs jwt_hs256_secret ({env_prefix}_JWT_HS256_SECRET)")]
    MissingSecret { env_prefix: &'static str },
    #[error(
        "jwt_hs256_secret is {bytes} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES} \
         (256 bits, RFC 7518 §3.2): generate one with `openssl rand -base64 32`"
    )]
    ShortSecret { bytes: usize },
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
    #[error(
        "auth is on but no audience is configured, so tokens the identity provider issued for \
         any other service would be accepted: set jwt_audience ({env_prefix}_JWT_AUDIENCE, \
         --jwt-audience) to the `aud` of this service's tokens, or, to accept any audience on \
         purpose, jwt_allow_any_audience = true ({env_prefix}_JWT_ALLOW_ANY_AUDIENCE=true, \
         --jwt-allow-any-audience)"
    )]
    MissingAudience { env_prefix: &'static str },
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
    /// Whether requests must carry a token.
    pub fn is_on(&self) -> bool {
        !matches!(self, Self::Off)
    }

    pub fn from_config(config: &ApiConfig) -> Result<Self, AuthConfigError> {
        Self::from_settings(&config.jwt_settings())
    }

    pub fn from_settings(settings: &JwtSettings<'_>) -> Result<Self, AuthConfigError> {
        let env_prefix = settings.env_prefix;
        let (key, algorithm) = match settings.auth_mode {
            AuthMode::Off => return Ok(Self::Off),
            AuthMode::Hs256 => {
                let secret = settings.hs256_secret;
                if secret.is_empty() {
                    return Err(AuthConfigError::MissingSecret { env_prefix });
                }
                if secret.len() < MIN_HS256_SECRET_BYTES {
                    return Err(AuthConfigError::ShortSecret {
                        bytes: secret.len(),
                    });
                }
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                )
            }
            AuthMode::Rs256 => {
                let path = settings.rs256_public_key_file;
                if path.is_empty() {
                    return Err(AuthConfigError::MissingPublicKey);
                }
                let pem = std::fs::read(path).map_err(|source| AuthConfigError::ReadPublicKey {
                    path: path.to_owned(),
                    source,
                })?;
                let key = DecodingKey::from_rsa_pem(&pem).map_err(|source| {
                    AuthConfigError::ParsePublicKey {
                        path: path.to_owned(),
                        source,
                    }
                })?;
                (key, Algorithm::RS256)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        // A configured issuer or audience must also be present, not only match when present.
        let mut required_claims = vec!["exp", "sub"];
        match settings.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required_claims.push("aud");
            }
            None if settings.allow_any_audience => {
                tracing::warn!(
                    "jwt_audience is not set and jwt_allow_any_audience is on: tokens for any \
                     audience are accepted"
                );
                validation.validate_aud = false;
            }
            None => return Err(AuthConfigError::MissingAudience { env_prefix }),
        }
        if let Some(issuer) = settings.issuer {
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
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, BearerError> {
        let Self::Jwt { key, validation } = self else {
            return Ok(Caller::Anyone);
        };
        let token = match bearer_token(headers) {
            Ok(token) => token,
            Err(reason) => {
                tracing::debug!(reason, "request without a bearer token");
                return Err(BearerError::Missing);
            }
        };
        verify(token, key, validation).map_err(|reason| {
            // The reason names the check, never the token or a claim's value.
            tracing::info!(%reason, "rejected a bearer token");
            BearerError::InvalidToken
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header; `Err` (why) when the request has no
/// bearer credentials at all. Bytes, not text: a token with bytes a header value may hold but
/// text may not is an invalid token, not a missing one.
fn bearer_token(headers: &HeaderMap) -> Result<&[u8], &'static str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or("no Authorization header")?
        .as_bytes();
    let (scheme, token) = match value.iter().position(|byte| *byte == b' ') {
        Some(space) => (&value[..space], &value[space + 1..]),
        None => (value, &value[value.len()..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err("the Authorization scheme is not Bearer");
    }
    // `Bearer` with an empty token is a bearer request with an invalid token.
    Ok(token.trim_ascii())
}

/// The caller a token speaks for, or why it is rejected.
fn verify(token: &[u8], key: &DecodingKey, validation: &Validation) -> Result<Caller, String> {
    let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
        .map_err(|error| rejection_reason(&error))?
        .claims;
    check_id("sub", &claims.sub).map_err(|rejection| rejection.detail)?;
    let scopes = [claims.scope, claims.scp]
        .into_iter()
        .flatten()
        .flat_map(Scopes::into_list)
        .collect();
    Ok(Caller::User {
        subject: claims.sub,
        scopes,
    })
}

/// What a token failed, for the log: the check's name, without the token's content (serde's
/// messages quote the offending value, base64's the offending byte).
fn rejection_reason(error: &jsonwebtoken::errors::Error) -> String {
    match error.kind() {
        ErrorKind::Json(error) => format!(
            "the header or claims are not JSON of the expected shape ({:?} error at column {})",
            error.classify(),
            error.column()
        ),
        ErrorKind::Base64(_) => "a part is not base64url".to_owned(),
        ErrorKind::Utf8(_) => "a part is not UTF-8".to_owned(),
        _ => error.to_string(),
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// OAuth 2.0 (RFC 8693 §4.2) and most providers.
    #[serde(default)]
    scope: Option<Scopes>,
    /// Azure AD (a space-separated string) and Okta (an array).
    #[serde(default)]
    scp: Option<Scopes>,
}

/// A scope claim: a space-separated string, or an array of strings with one scope each.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scopes {
    Text(String),
    List(Vec<String>),
}

impl Scopes {
    /// One scope per element: a string split at spaces, an array's elements as they are.
    fn into_list(self) -> Vec<String> {
        match self {
            Self::Text(text) => text
                .split(' ')
                .filter(|scope| !scope.is_empty())
                .map(str::to_owned)
                .collect(),
            Self::List(list) => list,
        }
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off: may read anyone, is no one.
    Anyone,
    User {
        subject: String,
        /// The token's `scope` and `scp` claims, one scope per element.
        scopes: Vec<String>,
    },
}

impl Caller {
    /// Whether the token carries `wanted` (exactly, case-sensitively); `false` with auth off.
    pub fn has_scope(&self, wanted: &str) -> bool {
        match self {
            Self::Anyone => false,
            Self::User { scopes, .. } => scopes.iter().any(|scope| scope == wanted),
        }
    }

    /// Whether this caller may read `user_id`'s top songs.
    pub fn authorize(&self, user_id: &str) -> Result<(), AppError> {
        match self {
            Self::Anyone => Ok(()),
            Self::User { subject, .. } if subject == user_id || self.has_scope(READ_ANY_SCOPE) => {
                Ok(())
            }
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
        Ok(state.authenticator().authenticate(&parts.headers)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use axum::response::IntoResponse;
    use clap::Parser;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{json, Value};

    const SECRET: &str = "unit-test-secret-of-32-bytes-ok!";

    fn hs256_config() -> ApiConfig {
        let mut config = ApiConfig::parse_from(["topk-api"]);
        config.auth_mode = AuthMode::Hs256;
        config.jwt_hs256_secret = SECRET.to_owned();
        config.jwt_audience = "topk-api".to_owned();
        config.jwt_issuer = String::new();
        config.jwt_allow_any_audience = false;
        config
    }

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
    }

    /// Claims for `alice` valid for ten minutes, for audience `topk-api`, with `extra` merged in
    /// (a `null` removes a claim).
    fn claims(extra: Value) -> Value {
        let mut claims = json!({"sub": "alice", "exp": now() + 600, "aud": "topk-api"});
        let Value::Object(extra) = extra else {
            panic!("extra claims must be an object");
        };
        for (name, value) in extra {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(&name);
            } else {
                claims[name] = value;
            }
        }
        claims
    }

    fn token(claims: &Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn bearer(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        headers
    }

    fn authenticate(config: &ApiConfig, claims: &Value) -> Result<Caller, BearerError> {
        Authenticator::from_config(config)
            .unwrap()
            .authenticate(&bearer(&format!("Bearer {}", token(claims, SECRET))))
    }

    #[track_caller]
    fn assert_invalid_token(result: Result<Caller, BearerError>) {
        match result {
            Err(BearerError::InvalidToken) => {}
            other => panic!("expected an invalid token, got {other:?}"),
        }
    }

    fn reads_any(config: &ApiConfig, extra: Value) -> bool {
        match authenticate(config, &claims(extra)) {
            Ok(caller @ Caller::User { .. }) => caller.has_scope(READ_ANY_SCOPE),
            other => panic!("expected a user, got {other:?}"),
        }
    }

    #[test]
    fn nbf_in_the_future_is_rejected_and_in_the_past_accepted() {
        let config = hs256_config();
        assert_invalid_token(authenticate(&config, &claims(json!({"nbf": now() + 600}))));
        assert!(authenticate(&config, &claims(json!({"nbf": now() - 600}))).is_ok());
        // Clock skew: jsonwebtoken's 60 s leeway.
        assert!(authenticate(&config, &claims(json!({"nbf": now() + 10}))).is_ok());
        // No nbf at all is fine: it is checked when present.
        assert!(authenticate(&config, &claims(json!({}))).is_ok());
    }

    #[test]
    fn scope_as_a_space_separated_string() {
        let config = hs256_config();
        assert!(reads_any(&config, json!({"scope": "topk:read:any"})));
        assert!(reads_any(
            &config,
            json!({"scope": "openid topk:read:any profile"})
        ));
        assert!(!reads_any(&config, json!({"scope": "topk:read:anything"})));
        assert!(!reads_any(&config, json!({"scope": "TOPK:READ:ANY"})));
        assert!(!reads_any(&config, json!({})));
    }

    #[test]
    fn scope_as_an_array_of_strings() {
        let config = hs256_config();
        assert!(reads_any(&config, json!({"scope": ["topk:read:any"]})));
        assert!(reads_any(
            &config,
            json!({"scope": ["openid", "topk:read:any"]})
        ));
        // One scope per element: an element is not split further.
        assert!(!reads_any(
            &config,
            json!({"scope": ["openid topk:read:any"]})
        ));
        assert!(!reads_any(&config, json!({"scope": []})));
        // A scope claim of another type makes the token malformed.
        assert_invalid_token(authenticate(&config, &claims(json!({"scope": 7}))));
        assert_invalid_token(authenticate(&config, &claims(json!({"scope": [1, 2]}))));
    }

    #[test]
    fn scp_as_a_string_or_an_array() {
        let config = hs256_config();
        // Azure AD: a space-separated string.
        assert!(reads_any(
            &config,
            json!({"scp": "User.Read topk:read:any"})
        ));
        // Okta: an array.
        assert!(reads_any(
            &config,
            json!({"scp": ["openid", "topk:read:any"]})
        ));
        assert!(!reads_any(&config, json!({"scp": "User.Read"})));
        assert!(!reads_any(&config, json!({"scp": ["openid"]})));
        // Either claim grants it.
        assert!(reads_any(
            &config,
            json!({"scope": "openid", "scp": ["topk:read:any"]})
        ));
    }

    #[test]
    fn missing_audience_is_refused_at_startup_unless_allowed() {
        let mut config = hs256_config();
        config.jwt_audience = String::new();
        let error = Authenticator::from_config(&config).unwrap_err();
        assert!(
            matches!(error, AuthConfigError::MissingAudience { .. }),
            "{error}"
        );
        let message = error.to_string();
        for named in ["TOPK_API_JWT_AUDIENCE", "TOPK_API_JWT_ALLOW_ANY_AUDIENCE"] {
            assert!(message.contains(named), "{message}");
        }

        config.jwt_allow_any_audience = true;
        assert!(Authenticator::from_config(&config).is_ok());
        assert!(authenticate(&config, &claims(json!({"aud": "another-api"}))).is_ok());
        assert!(authenticate(&config, &claims(json!({"aud": null}))).is_ok());

        // A configured audience is checked even with the option on.
        config.jwt_audience = "topk-api".to_owned();
        assert_invalid_token(authenticate(
            &config,
            &claims(json!({"aud": "another-api"})),
        ));
        assert_invalid_token(authenticate(&config, &claims(json!({"aud": null}))));
        assert!(authenticate(&config, &claims(json!({}))).is_ok());

        // Auth off needs no audience.
        let mut off = hs256_config();
        off.auth_mode = AuthMode::Off;
        off.jwt_audience = String::new();
        assert!(Authenticator::from_config(&off).is_ok());
    }

    #[test]
    fn short_hs256_secret_is_refused_at_startup() {
        let mut config = hs256_config();
        config.jwt_hs256_secret = "x".repeat(MIN_HS256_SECRET_BYTES - 1);
        let error = Authenticator::from_config(&config).unwrap_err();
        assert!(
            matches!(error, AuthConfigError::ShortSecret { bytes: 31 }),
            "{error}"
        );
        assert!(error.to_string().contains("at least 32"), "{error}");
        config.jwt_hs256_secret = "x".repeat(MIN_HS256_SECRET_BYTES);
        assert!(Authenticator::from_config(&config).is_ok());
        config.jwt_hs256_secret = String::new();
        assert!(matches!(
            Authenticator::from_config(&config),
            Err(AuthConfigError::MissingSecret { .. })
        ));
    }

    #[test]
    fn missing_credentials_and_invalid_tokens_get_their_challenges() {
        let authenticator = Authenticator::from_config(&hs256_config()).unwrap();
        let check = |headers: HeaderMap| match authenticator.authenticate(&headers) {
            Err(problem) => problem,
            other => panic!("expected a 401, got {other:?}"),
        };
        assert_eq!(check(HeaderMap::new()), BearerError::Missing);
        assert_eq!(check(bearer("Basic YWxpY2U6cHc=")), BearerError::Missing);
        assert_eq!(check(bearer("Bearer")), BearerError::InvalidToken);
        assert_eq!(check(bearer("Bearer not-a-jwt")), BearerError::InvalidToken);
        let mut non_ascii = HeaderMap::new();
        non_ascii.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        );
        assert_eq!(check(non_ascii), BearerError::InvalidToken);
        // The scheme is case-insensitive.
        let valid = token(&claims(json!({})), SECRET);
        assert!(authenticator
            .authenticate(&bearer(&format!("bearer {valid}")))
            .is_ok());

        assert_eq!(BearerError::Missing.challenge(), "Bearer realm=\"topk\"");
        assert_eq!(
            BearerError::InvalidToken.challenge(),
            "Bearer realm=\"topk\", error=\"invalid_token\""
        );
        assert!(INSUFFICIENT_SCOPE_CHALLENGE.ends_with(&format!("scope=\"{READ_ANY_SCOPE}\"")));
    }

    /// Every invalid token gets the same 401: the body does not say which check failed.
    #[test]
    fn every_invalid_token_gets_the_same_response() {
        let config = hs256_config();
        let authenticator = Authenticator::from_config(&config).unwrap();
        let tokens = [
            token(&claims(json!({"exp": now() - 3600})), SECRET),
            token(&claims(json!({})), "another-secret-of-32-bytes-long!"),
            token(&claims(json!({"nbf": now() + 600})), SECRET),
            token(&claims(json!({"aud": "another-api"})), SECRET),
            token(&claims(json!({"sub": ""})), SECRET),
            token(&claims(json!({"sub": 42})), SECRET),
            "not-a-jwt".to_owned(),
        ];
        let mut responses = tokens.iter().map(|token| {
            let error = authenticator
                .authenticate(&bearer(&format!("Bearer {token}")))
                .unwrap_err();
            let error = AppError::from(error);
            assert_eq!(error.to_string(), "missing or invalid bearer token");
            let response = error.into_response();
            let challenge = response.headers()[header::WWW_AUTHENTICATE].clone();
            (response.status(), challenge)
        });
        let first = responses.next().unwrap();
        assert_eq!(first.0, axum::http::StatusCode::UNAUTHORIZED);
        assert_eq!(first.1, BearerError::InvalidToken.challenge());
        assert!(responses.all(|response| response == first));
    }

    #[test]
    fn forbidden_carries_insufficient_scope() {
        let caller = Caller::User {
            subject: "alice".to_owned(),
            scopes: vec!["openid".to_owned()],
        };
        assert!(caller.authorize("alice").is_ok());
        let response = caller.authorize("bob").unwrap_err().into_response();
        assert_eq!(response.status(), axum::http::StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"topk\", error=\"insufficient_scope\", scope=\"topk:read:any\""
        );
    }
}
