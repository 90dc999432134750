//! Auth: HS256 and RS256 tokens, who may read whom, and the 401/403 cases with their RFC 6750
//! challenges.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use topk_tests::stack;

use super::*;

/// A key pair made for these tests only (`openssl genrsa 2048`); it guards nothing.
const TEST_RSA_PRIVATE_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCpSSGig8PUruNA\n\
wmx4/qFrQZgZWdKVCWRMKxUmXjTyryHPuSK/n+IcZ7VncmjOtlAsBa6gAnrTyAb+\n\
MberbFU/kN6MqfQWeG9C7NRCEL6Wr4XKwZoQNT272RPbd7wR+gxso3D5jOY9sfce\n\
9WnZ+G7cYWZbk+TapYl6pIqojjvb+FJsuUsQC+zEYCoqmURPSaDmn/hNa+eXbPAg\n\
Qfqcic5+vO7Q6iQ6AcH1P9RF2s7tOHeUWrErcq6h1p+0o9ZQxFa+RDdfOhcUUmUV\n\
gPhDC5aLjhZX8MgFM06cAICR1NEf+Z0nUT3adnAnj/rcGntxUW2oCqlVfXxJCN2B\n\
JJaD/1/nAgMBAAECggEADbOqIcXJfXb0VOMHtZlihlRmU7L1/PMoJ5QbH6JjZbsw\n\
IOiKu/jca9EnGSrk+co+3flNw4y/1VFs43kxtRHNKpp2sOr2ozT3SHLz0S8axgaJ\n\
7TnTVvmAOCqfVVWxJsFW7RojhEdXwWmcp2hUu3xEuNi3WLU1Qk9Au+kCghcVGD40\n\
9jjiJl/aD5aDNZ+d0Tme+fxXtgGUVdoVzzwkv2ioVQOqRUMKoCqF9dV3A1GjBYw8\n\
TyjXW6sSFv4nS9oj9IV735e2/2QEmBok6ZaewicRRF6SSD6BUaMJtuM7nbEaxwwD\n\
km7eVcYNFxwWhtbHEH4MRhaiV3aH94TRQNw8Dw3EuQKBgQDSH41Qzz6ZSdAAmKS3\n\
YGOqbCp7aA2CaM/LJG9IwHIYwe9NBBk1lLDbtlYiq748BIOTyis/716cMWeBreC5\n\
5EN1vcXYRAEySZcBEH9BXbCd8daSno3nM9bPEfQiPwcp3FoAJOs2ddOJJY59o5yy\n\
Aq3deYf+9pYM8CdiyyNvsaTH7wKBgQDOPwnvhtpJijhitFl9tusqTjAzKRzv3PXQ\n\
6/7nEJrlRCavDRvWrJiiFYhiDegMr78OPYWJ98rrj91CRSR2bDFTbMNCdVlHC5t3\n\
JM8eydrj+NKhPp7pZsKHaMyRPgpd+P+Ag4wwuMK2f3OSRBVa2nj1yde0YVK/GI80\n\
mnjkEByviQKBgACquPgYsEosQcy+r0cltytDTJ83pVNUodQzOWcxtSr+8pN7/9h7\n\
sFQCMCPMB76JBSHi8mAxkktMnNd8hcoRP2WQRKB7FsXiFeia9MxwT68wpU2x0yF4\n\
uKXPmMbDDHLFkEOP2m9B0HoO9HTRoB2whHy/df8JKVDBMl7N5j7kgXFhAoGAGDaS\n\
ZgqA6g1OHVhrATVOWoMfaYI0IXzhZwutu1bZuHzNxdNWJ1fP+4dnoYtcaNDhLzzN\n\
xqrOqeUT5snTRAvjppWoPs8kEhEsyUoK/uRXzFfT8pY1ddVYlSkaixqrgOjQpjfL\n\
Z5TpVx+TY+KWVzo65TAzILwkSMcLWPOhqbSyiXECgYBxwsBrOcca/4077FyXoAnW\n\
+PyKVNYQnGcf6e/iHaI2K0ipdRZo7zuky7PHJBF0siIZWaWvjB+LL86UmQ5LL3MX\n\
dTaI9sPrU3XbJt35FDOiEQWUnO3nW7p9jfiJ/bpqpg+oOUF31vwNt+wKElQmUBK/\n\
J+TPqBERUZmeC2yvguUTgA==\n\
-----END PRIVATE KEY-----\n";
const TEST_RSA_PUBLIC_KEY: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAqUkhooPD1K7jQMJseP6h\n\
a0GYGVnSlQlkTCsVJl408q8hz7kiv5/iHGe1Z3JozrZQLAWuoAJ608gG/jG3q2xV\n\
P5DejKn0FnhvQuzUQhC+lq+FysGaEDU9u9kT23e8EfoMbKNw+YzmPbH3HvVp2fhu\n\
3GFmW5Pk2qWJeqSKqI472/hSbLlLEAvsxGAqKplET0mg5p/4TWvnl2zwIEH6nInO\n\
frzu0OokOgHB9T/URdrO7Th3lFqxK3KuodaftKPWUMRWvkQ3XzoXFFJlFYD4QwuW\n\
i44WV/DIBTNOnACAkdTRH/mdJ1E92nZwJ4/63Bp7cVFtqAqpVX18SQjdgSSWg/9f\n\
5wIDAQAB\n\
-----END PUBLIC KEY-----\n";

/// The HS256 secret of these tests (at least 32 bytes, as the server requires).
const TEST_SECRET: &str = "topk-api-test-secret-32-bytes-ok";
/// Signs with another secret of the same length: a bad signature.
const WRONG_SECRET: &str = "topk-api-wrong-secret-32-bytes-ok";

/// What every 401 says, whichever check failed.
const UNAUTHENTICATED_MESSAGE: &str = "missing or invalid bearer token";
const CHALLENGE_MISSING: &str = "Bearer realm=\"topk\"";
const CHALLENGE_INVALID_TOKEN: &str = "Bearer realm=\"topk\", error=\"invalid_token\"";
const CHALLENGE_INSUFFICIENT_SCOPE: &str =
    "Bearer realm=\"topk\", error=\"insufficient_scope\", scope=\"topk:read:any\"";

#[derive(serde::Serialize)]
struct TestClaims<'a> {
    sub: &'a str,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    /// A string or an array of strings.
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scp: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

fn claims(sub: &str) -> TestClaims<'_> {
    TestClaims {
        sub,
        exp: Utc::now().timestamp() + 600,
        nbf: None,
        scope: None,
        scp: None,
        iss: None,
        aud: None,
    }
}

fn hs256(claims: &TestClaims<'_>, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn rs256(claims: &TestClaims<'_>) -> String {
    let key = EncodingKey::from_rsa_pem(TEST_RSA_PRIVATE_KEY.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
}

#[tokio::test]
async fn hs256_tokens_read_their_own_user_or_anyone_with_the_scope() {
    let options = stack::fresh_database("api_auth_hs256").await;
    let mut counts = Counts::new();
    counts.insert(
        ("alice".to_owned(), day(0)),
        [("song-a".to_owned(), 2)].into(),
    );
    counts.insert(
        ("bob".to_owned(), day(1)),
        [("song-b".to_owned(), 5)].into(),
    );
    topk_tests::committed::write_committed(
        &options,
        &minute_rows(&mut StdRng::seed_from_u64(3), &counts),
    )
    .await;
    let mut config = config(options);
    config.auth_mode = AuthMode::Hs256;
    config.jwt_hs256_secret = TEST_SECRET.to_owned();
    config.jwt_issuer = "topk-idp".to_owned();
    config.jwt_audience = "topk-api".to_owned();
    let app = fixed_app(&config);
    // Signed with the server's secret; issuer and audience are the expected ones unless set.
    let signed = |claims: TestClaims<'_>| {
        let iss = claims.iss.or(Some("topk-idp"));
        let aud = claims.aud.or(Some("topk-api"));
        hs256(&TestClaims { iss, aud, ..claims }, TEST_SECRET)
    };
    let alice = signed(claims("alice"));
    let alice_uri = "/v1/users/alice/top-songs";

    let own = get(&app, alice_uri, Some(&alice)).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    assert_eq!(song_list(&own.body), [("song-a".to_owned(), 2)]);
    let me = get(&app, "/v1/me/top-songs?limit=5", Some(&alice)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["user_id"], "alice");
    assert_eq!(song_list(&me.body), [("song-a".to_owned(), 2)]);

    let someone_else = get(&app, "/v1/users/bob/top-songs", Some(&alice)).await;
    assert_error(&someone_else, StatusCode::FORBIDDEN, "forbidden");
    for scope in ["topk:read:any", "profile topk:read:any email"] {
        let admin = signed(TestClaims {
            scope: Some(scope.into()),
            ..claims("ops")
        });
        let reply = get(&app, "/v1/users/bob/top-songs", Some(&admin)).await;
        assert_eq!(reply.status, StatusCode::OK, "{scope}: {}", reply.body);
        assert_eq!(song_list(&reply.body), [("song-b".to_owned(), 5)]);
    }
    for scope in ["topk:read:anything", "TOPK:READ:ANY", "topk:read"] {
        let almost = signed(TestClaims {
            scope: Some(scope.into()),
            ..claims("ops")
        });
        assert_error(
            &get(&app, "/v1/users/bob/top-songs", Some(&almost)).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }

    let unauthenticated = [
        None,
        Some("not-a-jwt".to_owned()),
        Some(hs256(
            &TestClaims {
                iss: Some("topk-idp"),
                aud: Some("topk-api"),
                ..claims("alice")
            },
            WRONG_SECRET,
        )),
        Some(signed(TestClaims {
            exp: Utc::now().timestamp() - 3600,
            ..claims("alice")
        })),
        Some(hs256(&claims("alice"), TEST_SECRET)),
        Some(signed(TestClaims {
            iss: Some("someone-else"),
            ..claims("alice")
        })),
        Some(signed(TestClaims {
            aud: Some("another-api"),
            ..claims("alice")
        })),
        Some(signed(claims(""))),
        Some(rs256(&TestClaims {
            iss: Some("topk-idp"),
            aud: Some("topk-api"),
            ..claims("alice")
        })),
    ];
    for token in &unauthenticated {
        for uri in [alice_uri, "/v1/me/top-songs"] {
            let reply = get(&app, uri, token.as_deref()).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{uri} with {token:?}"
            );
            assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthenticated");
            assert_eq!(
                reply.body["error"]["message"], UNAUTHENTICATED_MESSAGE,
                "{uri} with {token:?}"
            );
            let challenge = if token.is_some() {
                CHALLENGE_INVALID_TOKEN
            } else {
                CHALLENGE_MISSING
            };
            assert_eq!(
                reply.headers[header::WWW_AUTHENTICATE],
                challenge,
                "{uri} with {token:?}"
            );
        }
    }
    let basic = app
        .clone()
        .oneshot(
            Request::get(alice_uri)
                .header(header::AUTHORIZATION, "Basic YWxpY2U6cHc=")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    // Another scheme is no bearer authentication at all: no error attribute (RFC 6750 §3.1).
    assert_eq!(basic.headers()[header::WWW_AUTHENTICATE], CHALLENGE_MISSING);
    // Authentication comes before input validation: no token, bad limit → 401.
    assert_error(
        &get(&app, "/v1/users/alice/top-songs?limit=0", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_error(
        &get(&app, "/v1/users/alice/top-songs?limit=0", Some(&alice)).await,
        StatusCode::BAD_REQUEST,
        "invalid_limit",
    );
}

#[tokio::test]
async fn rs256_tokens_are_verified_with_the_public_key() {
    let options = stack::fresh_database("api_auth_rs256").await;
    let key_path =
        std::env::temp_dir().join(format!("topk-api-test-{}.pub.pem", std::process::id()));
    std::fs::write(&key_path, TEST_RSA_PUBLIC_KEY).unwrap();
    let mut config = config(options);
    config.auth_mode = AuthMode::Rs256;
    config.jwt_rs256_public_key_file = key_path.to_str().unwrap().to_owned();
    // No audience: refused at startup unless accepting any audience is asked for explicitly.
    let error = AppState::from_config(&config).unwrap_err().to_string();
    assert!(error.contains("TOPK_API_JWT_AUDIENCE"), "{error}");
    config.jwt_allow_any_audience = true;
    let app = fixed_app(&config);
    std::fs::remove_file(&key_path).unwrap();

    let own = get(
        &app,
        "/v1/users/carol/top-songs",
        Some(&rs256(&claims("carol"))),
    )
    .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    let other = get(
        &app,
        "/v1/users/dave/top-songs",
        Some(&rs256(&claims("carol"))),
    )
    .await;
    assert_error(&other, StatusCode::FORBIDDEN, "forbidden");
    let any = rs256(&TestClaims {
        scope: Some("topk:read:any".into()),
        ..claims("carol")
    });
    assert_eq!(
        get(&app, "/v1/users/dave/top-songs", Some(&any))
            .await
            .status,
        StatusCode::OK
    );
    // The classic confusion: an HS256 token "signed" with the public key as the secret.
    let forged = hs256(&claims("dave"), TEST_RSA_PUBLIC_KEY);
    assert_error(
        &get(&app, "/v1/users/dave/top-songs", Some(&forged)).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );

    let mut missing_key = config.clone();
    missing_key.jwt_rs256_public_key_file = "/nonexistent/key.pem".to_owned();
    assert!(AppState::from_config(&missing_key).is_err());
    missing_key.auth_mode = AuthMode::Hs256;
    assert!(
        AppState::from_config(&missing_key).is_err(),
        "hs256 without a secret"
    );
}

/// The rules of issue 13: `nbf`, scopes as arrays and `scp`, RFC 6750 challenges, and one
/// 401 body whichever check failed.
#[tokio::test]
async fn nbf_scope_forms_and_rfc6750_challenges() {
    let options = stack::fresh_database("api_auth_rules").await;
    let mut counts = Counts::new();
    counts.insert(
        ("bob".to_owned(), day(2)),
        [("song-b".to_owned(), 4)].into(),
    );
    topk_tests::committed::write_committed(
        &options,
        &minute_rows(&mut StdRng::seed_from_u64(13), &counts),
    )
    .await;
    let mut config = config(options);
    config.auth_mode = AuthMode::Hs256;
    config.jwt_hs256_secret = TEST_SECRET.to_owned();
    config.jwt_audience = "topk-api".to_owned();
    let app = fixed_app(&config);
    let signed = |claims: TestClaims<'_>| {
        hs256(
            &TestClaims {
                aud: claims.aud.or(Some("topk-api")),
                ..claims
            },
            TEST_SECRET,
        )
    };
    let bob_uri = "/v1/users/bob/top-songs";

    // nbf: in the future → 401 invalid_token; in the past → accepted.
    let not_yet = signed(TestClaims {
        nbf: Some(Utc::now().timestamp() + 600),
        ..claims("bob")
    });
    let reply = get(&app, bob_uri, Some(&not_yet)).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_eq!(
        reply.headers[header::WWW_AUTHENTICATE],
        CHALLENGE_INVALID_TOKEN
    );
    let already = signed(TestClaims {
        nbf: Some(Utc::now().timestamp() - 600),
        ..claims("bob")
    });
    let reply = get(&app, bob_uri, Some(&already)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    // The read-any scope as an array, and in `scp` as a string or an array: alice reads bob.
    let granting = [
        (Some(json!(["openid", "topk:read:any"])), None),
        (None, Some(json!("User.Read topk:read:any"))),
        (None, Some(json!(["topk:read:any"]))),
    ];
    for (scope, scp) in granting {
        let token = signed(TestClaims {
            scope: scope.clone(),
            scp: scp.clone(),
            ..claims("alice")
        });
        let reply = get(&app, bob_uri, Some(&token)).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{scope:?} {scp:?}: {}",
            reply.body
        );
        assert_eq!(song_list(&reply.body), [("song-b".to_owned(), 4)]);
    }

    // Without it: 403 with the insufficient_scope challenge naming the scope needed.
    for (scope, scp) in [
        (None, None),
        (Some(json!(["openid", "topk:read"])), None),
        (None, Some(json!("User.Read"))),
        (Some(json!(["openid topk:read:any"])), None),
    ] {
        let token = signed(TestClaims {
            scope: scope.clone(),
            scp: scp.clone(),
            ..claims("alice")
        });
        let reply = get(&app, bob_uri, Some(&token)).await;
        assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");
        assert_eq!(
            reply.headers[header::WWW_AUTHENTICATE],
            CHALLENGE_INSUFFICIENT_SCOPE,
            "{scope:?} {scp:?}"
        );
    }

    // Expired and wrongly signed (and the other failures): the same 401 body, byte for byte.
    let expired = signed(TestClaims {
        exp: Utc::now().timestamp() - 3600,
        ..claims("bob")
    });
    let bad_signature = hs256(
        &TestClaims {
            aud: Some("topk-api"),
            ..claims("bob")
        },
        WRONG_SECRET,
    );
    let wrong_audience = signed(TestClaims {
        aud: Some("another-api"),
        ..claims("bob")
    });
    let expired_reply = get(&app, bob_uri, Some(&expired)).await;
    assert_error(&expired_reply, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_eq!(
        expired_reply.body,
        json!({"error": {"code": "unauthenticated", "message": UNAUTHENTICATED_MESSAGE}})
    );
    for token in [&bad_signature, &not_yet, &wrong_audience] {
        let reply = get(&app, bob_uri, Some(token)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.body, expired_reply.body);
        assert_eq!(
            reply.headers[header::WWW_AUTHENTICATE],
            CHALLENGE_INVALID_TOKEN
        );
    }
    // A missing token: the same body, a challenge without an error attribute.
    let missing = get(&app, bob_uri, None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.body, expired_reply.body);
    assert_eq!(missing.headers[header::WWW_AUTHENTICATE], CHALLENGE_MISSING);
}
