//! cartinject's `/proc/PID/mountinfo` parser (injector/src/mountinfo.rs, included as is:
//! cartinject has no library yet).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../injector/src/mountinfo.rs"]
mod mountinfo;

fuzz_target!(|data: &[u8]| {
    // cartinject reads the file lossily: invalid UTF-8 must not hide the lines around it.
    let text = String::from_utf8_lossy(data);
    let entries = mountinfo::parse(&text);
    for line in text.lines() {
        let _ = mountinfo::parse_line(line);
    }
    let _ = mountinfo::at(&entries, "/dev/crashcart");
});
