//! The SMART scope grammar: whatever parses has a canonical spelling that parses the same.
#![no_main]

use fhirguard_authz::core::smart;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let set = smart::parse_scopes(text.split(' '));
    for s in &set.scopes {
        let canonical = format!(
            "{}/{}.{}{}",
            s.context.as_str(),
            s.resource_type.as_deref().unwrap_or("*"),
            s.perms.letters(),
            s.query
                .as_deref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        );
        assert_eq!(
            smart::parse_scope(&canonical).as_ref(),
            Some(s),
            "{canonical}"
        );
    }
});
