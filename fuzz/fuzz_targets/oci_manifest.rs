//! A manifest (or index, or anything else) a registry answers with, read as a crashcart
//! artifact (`cartoci::artifact::parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(layout) = cartoci::artifact::parse(data) {
        for layer in layout.layers() {
            // The file names a pull writes must be safe ones.
            assert!(
                cartoci::artifact::is_safe_file_name(&layer.name),
                "unsafe layer file name {:?}",
                layer.name
            );
            let _ = (layer.part.media_type(), layer.part.suffix());
        }
    }
});
