//! The `<image>.manifest.json` beside an image (and `.crashcart/manifest.json` in it), and the
//! `.sha256` checksum file, as cartinject reads them.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.img.manifest.json");
    if let Ok(manifest) = cartimage::manifest::Manifest::from_slice(data, path) {
        let _ = manifest.to_json();
        let _ = manifest.file("bin/sh");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = cartimage::manifest::is_sha256_hex(text);
    }
});
