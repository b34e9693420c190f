//! Signs a demo JWT (ES256) for `scripts/demo.sh`: `mint_token KEY.pem KID 'CLAIMS-JSON'`.
//! `exp`/`iat` are filled in relative to now unless the claims set them; `"exp": -60` means
//! "expired a minute ago". For demos and tests only: real tokens come from your IdP.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, key, kid, claims] = args.as_slice() else {
        return Err("usage: mint_token KEY.pem KID CLAIMS-JSON".into());
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let mut claims: serde_json::Value = serde_json::from_str(claims)?;
    let obj = claims
        .as_object_mut()
        .ok_or("claims must be a JSON object")?;
    let exp = obj.get("exp").and_then(|v| v.as_i64()).unwrap_or(600);
    obj.insert("exp".into(), (now + exp).into());
    obj.entry("iat").or_insert((now.min(now + exp - 1)).into());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.clone());
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(key)?)?;
    println!("{}", jsonwebtoken::encode(&header, &claims, &key)?);
    Ok(())
}
