//! minisign public keys (`VerifyKey::from_text`), signatures (`ImageSignature::decode`)
//! and verification. The input is `KEY \0 SIGNATURE \0 IMAGE`.
#![no_main]

use std::path::Path;

use cartimage::signature::{ImageSignature, VerifyKey, comment_field};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let key = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let sig = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let image = parts.next().unwrap_or_default();
    let key = VerifyKey::from_text(&key, "fuzz.pub");
    let Ok(sig) = ImageSignature::decode(&sig, Path::new("fuzz.img.minisig")) else {
        return;
    };
    let comment = sig.trusted_comment();
    for field in ["timestamp", "file", "sha256"] {
        let _ = comment_field(comment, field);
    }
    if let Ok(key) = key {
        let _ = sig.verify_reader(image, &key);
    }
});
