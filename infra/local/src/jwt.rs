//! HS256 JWTs for local identity. On AWS, Cognito signs the tokens and API
//! Gateway verifies them; locally the host does both with a shared secret.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

/// The documented development secret (README "Local identity"). Override with `LOCAL_JWT_SECRET`.
pub const DEFAULT_SECRET: &str = "taskflow-local-development-secret";

type HmacSha256 = Hmac<Sha256>;

pub fn secret_from_env() -> Vec<u8> {
    std::env::var("LOCAL_JWT_SECRET")
        .unwrap_or_else(|_| DEFAULT_SECRET.to_owned())
        .into_bytes()
}

/// Signs a token carrying the same claims a Cognito ID token would.
pub fn sign(secret: &[u8], user: &str, agency: &str, role: &str, ttl_seconds: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let claims = json!({
        "sub": user,
        "custom:agencyId": agency,
        "custom:role": role,
        "iat": now,
        "exp": now + ttl_seconds,
        "iss": "taskflow-local",
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Verifies signature, algorithm and expiry; returns the claims.
pub fn verify(secret: &[u8], token: &str, now: i64) -> Result<Map<String, Value>, &'static str> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT");
    };
    let header: Value = decode_json(header)?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err("unsupported algorithm");
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "bad signature encoding")?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{}.{payload}", token.split('.').next().unwrap_or_default()).as_bytes());
    mac.verify_slice(&signature).map_err(|_| "bad signature")?;
    let Value::Object(claims) = decode_json(payload)? else {
        return Err("claims are not an object");
    };
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp > now => Ok(claims),
        Some(_) => Err("token expired"),
        None => Err("token has no exp"),
    }
}

fn decode_json(part: &str) -> Result<Value, &'static str> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| "bad base64")?;
    serde_json::from_slice(&bytes).map_err(|_| "bad JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_and_carry_claims() {
        let token = sign(b"k", "u1", "a1", "manager", 60);
        let claims = verify(b"k", &token, chrono::Utc::now().timestamp()).unwrap();
        assert_eq!(claims["custom:agencyId"], "a1");
        assert_eq!(claims["custom:role"], "manager");
    }

    #[test]
    fn wrong_key_tampering_and_expiry_are_refused() {
        let token = sign(b"k", "u1", "a1", "manager", 60);
        let now = chrono::Utc::now().timestamp();
        assert_eq!(verify(b"other", &token, now), Err("bad signature"));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            r#"{"sub":"u1","custom:agencyId":"a2","custom:role":"manager","exp":9999999999}"#,
        );
        parts[1] = &forged;
        assert_eq!(verify(b"k", &parts.join("."), now), Err("bad signature"));
        assert_eq!(verify(b"k", &token, now + 61), Err("token expired"));
        assert!(verify(b"k", "a.b", now).is_err());
    }
}
