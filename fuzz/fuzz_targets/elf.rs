//! The ELF check cartbuild runs on every executable it stages (`cartbuild::elf::inspect`:
//! static or not, loadable or not), on a file holding the fuzzer's bytes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("crashcart-fuzz-elf.")
            .tempdir()
            .expect("scratch directory")
    });
    let path = dir.path().join("exe");
    std::fs::write(&path, data).expect("write the file");
    if let Ok(Some(info)) = cartbuild::elf::inspect(&path) {
        let _ = (info.is_static(), info.is_loadable(), format!("{info:?}"));
    }
});
