//! htpasswd parsing and scheme checks (pure; no hashing here).
//!
//! Only salted, deliberately slow schemes are accepted: bcrypt (`$2a$`, `$2b$`, `$2y$`),
//! SHA-512-crypt (`$6$`) and argon2id (PHC string). Everything else is refused with a message
//! that says how to fix it; an unsalted `{SHA}` or a plain-text line would make a leaked
//! Secret an immediate credential leak.

use std::collections::BTreeSet;

/// The hash schemes fhirguard verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bcrypt,
    Sha512Crypt,
    Argon2id,
}

/// One accepted line.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    pub user: String,
    pub hash: String,
    pub scheme: Scheme,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("user", &self.user)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// A line that cannot be used. The message never contains the hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("htpasswd line {line}{}: {message}", user.as_ref().map(|u| format!(" (user {u:?})")).unwrap_or_default())]
pub struct LineError {
    pub line: usize,
    pub user: Option<String>,
    pub message: String,
}

/// Parses an htpasswd file. Blank lines and `#` comments are skipped. Returns every problem,
/// not just the first, so that a user can fix the file in one go.
pub fn parse(text: &str) -> Result<Vec<Entry>, Vec<LineError>> {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    let mut users = BTreeSet::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let err = |user: Option<&str>, message: &str| LineError {
            line,
            user: user.map(str::to_string),
            message: message.to_string(),
        };
        if raw.contains('\r') {
            errors.push(err(
                None,
                "contains a carriage return (CRLF line ending); save the file with LF endings",
            ));
            continue;
        }
        if raw.trim().is_empty() || raw.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = raw.split_once(':') else {
            errors.push(err(None, "is not of the form user:hash"));
            continue;
        };
        if user.is_empty() || user.trim() != user || user.chars().any(char::is_control) {
            errors.push(err(
                None,
                "has an empty user name or one with spaces around it",
            ));
            continue;
        }
        match scheme_of(hash) {
            Ok(scheme) => {
                if !users.insert(user.to_string()) {
                    errors.push(err(Some(user), "the user appears more than once"));
                    continue;
                }
                entries.push(Entry {
                    user: user.to_string(),
                    hash: hash.to_string(),
                    scheme,
                });
            }
            Err(message) => errors.push(err(Some(user), message)),
        }
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

fn crypt_b64(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
}

/// Which scheme a hash uses, or why it is refused.
pub fn scheme_of(hash: &str) -> Result<Scheme, &'static str> {
    if let Some(rest) = hash
        .strip_prefix("$2a$")
        .or_else(|| hash.strip_prefix("$2b$"))
        .or_else(|| hash.strip_prefix("$2y$"))
    {
        let (cost, digest) = rest.split_once('$').ok_or("malformed bcrypt hash")?;
        let cost: u32 = cost.parse().map_err(|_| "malformed bcrypt cost")?;
        if !(4..=31).contains(&cost) || digest.len() != 53 || !crypt_b64(digest) {
            return Err("malformed bcrypt hash");
        }
        return Ok(Scheme::Bcrypt);
    }
    if let Some(rest) = hash.strip_prefix("$6$") {
        let mut parts: Vec<&str> = rest.split('$').collect();
        if parts.first().is_some_and(|p| p.starts_with("rounds=")) {
            parts.remove(0);
        }
        return match parts.as_slice() {
            [salt, digest] if salt.len() <= 16 && digest.len() == 86 && crypt_b64(digest) => {
                Ok(Scheme::Sha512Crypt)
            }
            _ => Err("malformed SHA-512-crypt ($6$) hash"),
        };
    }
    if let Some(rest) = hash.strip_prefix("$argon2id$") {
        let parts: Vec<&str> = rest.split('$').collect();
        return match parts.as_slice() {
            [v, params, salt, digest]
                if v.starts_with("v=")
                    && params.contains("m=")
                    && params.contains("t=")
                    && params.contains("p=")
                    && !salt.is_empty()
                    && !digest.is_empty() =>
            {
                Ok(Scheme::Argon2id)
            }
            _ => Err("malformed argon2id PHC string"),
        };
    }
    Err(if hash.starts_with("{SHA}") {
        "unsalted {SHA} hashes are refused; re-create the entry with `htpasswd -B` (bcrypt)"
    } else if hash.starts_with("$apr1$") || hash.starts_with("$1$") {
        "MD5-based hashes are refused; re-create the entry with `htpasswd -B` (bcrypt)"
    } else if hash.starts_with("$5$") {
        "SHA-256-crypt is not accepted; use bcrypt (`htpasswd -B`), SHA-512-crypt ($6$) or argon2id"
    } else if hash.starts_with("$argon2") {
        "only the argon2id variant is accepted"
    } else {
        "looks like plain text or an unknown scheme; accepted are bcrypt, SHA-512-crypt ($6$) and argon2id"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCRYPT: &str = "$2y$05$3bPgAOMbkZ3UxBYuvB/T2.7xI0ag4VDj9gkOHkRyz0.p5Rz8Ru.Ia";
    const SHA512: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    const ARGON: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$Vs1uXDo3a7Lz3ir3yIMPJhTjQ5UojvNnUSG4M9SeZsw";

    #[test]
    fn accepted_schemes() {
        let text = format!("# users\nalice:{BCRYPT}\n\nbob:{SHA512}\ncarol:{ARGON}\n");
        let e = parse(&text).unwrap();
        let got: Vec<_> = e.iter().map(|e| (e.user.as_str(), e.scheme)).collect();
        assert_eq!(
            got,
            vec![
                ("alice", Scheme::Bcrypt),
                ("bob", Scheme::Sha512Crypt),
                ("carol", Scheme::Argon2id)
            ]
        );
    }

    #[test]
    fn refused_lines_name_the_line_and_user_but_not_the_hash() {
        let cases = [
            ("dave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "unsalted"),
            ("dave:$apr1$abc$def", "MD5"),
            ("dave:hunter2", "plain text"),
            ("dave:$5$salt$abc", "SHA-256"),
            ("dave:$argon2i$v=19$m=1,t=1,p=1$c2$aGFzaA", "argon2id"),
            ("dave:$2y$05$short", "malformed bcrypt"),
            ("davehash", "user:hash"),
        ];
        for (line, want) in cases {
            let errs = parse(line).unwrap_err();
            let msg = errs[0].to_string();
            assert!(msg.contains(want), "{line}: {msg}");
            assert!(msg.starts_with("htpasswd line 1"), "{msg}");
            let hash = line.split_once(':').map(|x| x.1).unwrap_or("");
            assert!(
                hash.is_empty() || !msg.contains(hash),
                "{msg} leaks the hash"
            );
        }
    }

    #[test]
    fn crlf_and_duplicates_are_refused_with_all_errors_listed() {
        let text = format!("alice:{BCRYPT}\r\nbob:{BCRYPT}\nbob:{SHA512}\n");
        let errs = parse(&text).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].message.contains("carriage return"));
        assert_eq!(errs[1].line, 3);
        assert_eq!(errs[1].user.as_deref(), Some("bob"));
    }
}
