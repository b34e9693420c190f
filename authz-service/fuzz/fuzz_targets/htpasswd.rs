//! htpasswd parsing: no panic on any text, and refusals never repeat a line's hash. For the
//! second check the input also becomes a `user:hash` line whose hash is drawn from characters
//! (upper case, digits, `$./`) that no refusal message contains eight of in a row, so a
//! message containing the hash can only have copied it.
#![no_main]

use fhirguard_authz::config::htpasswd;
use libfuzzer_sys::fuzz_target;

const HASH_CHARS: &[u8] = b"$./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

fuzz_target!(|data: &[u8]| {
    let _ = htpasswd::parse(&String::from_utf8_lossy(data));

    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(split) % (rest.len() + 1);
    let user: String = rest[..at]
        .iter()
        .map(|b| char::from(b'a' + b % 26))
        .collect();
    let hash: String = rest[at..]
        .iter()
        .map(|b| char::from(HASH_CHARS[usize::from(*b) % HASH_CHARS.len()]))
        .collect();
    if hash.len() < 8 {
        return;
    }
    if let Err(errors) = htpasswd::parse(&format!("{user}:{hash}\n")) {
        for e in errors {
            assert!(!e.to_string().contains(&hash), "{e}");
        }
    }
});
