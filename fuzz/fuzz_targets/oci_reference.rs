//! `oci://HOST[:PORT]/REPO[:TAG][@sha256:DIGEST]` references and `sha256:` digests, as a
//! user or a registry's answer gives them. A reference that parses prints as one that
//! parses back to the same reference.
#![no_main]

use cartoci::{Digest, Reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Reference::looks_like(text);
    if let Ok(digest) = Digest::parse(text) {
        assert_eq!(Digest::parse(&digest.to_string()).ok(), Some(digest));
    }
    let _ = Digest::from_hex(text);
    let Ok(reference) = Reference::parse(text) else {
        return;
    };
    let _ = reference.target();
    let _ = (
        reference.registry.transport(),
        reference.registry.authority(),
        reference.registry.base_url(),
    );
    let shown = reference.to_string();
    let again = Reference::parse(&shown)
        .unwrap_or_else(|e| panic!("{text:?} parses, prints as {shown:?}, which does not: {e}"));
    assert_eq!(again, reference, "{text:?} printed as {shown:?}");
});
