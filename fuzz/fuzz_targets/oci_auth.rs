//! What a registry answers a pull with before the manifest: its `WWW-Authenticate`
//! challenges (`cartoci::auth::parse_challenges`) and its token endpoint's JSON
//! (`cartoci::auth::token_from_response`). The input is `HEADER \0 BODY`.
#![no_main]

use cartoci::auth::{Challenge, parse_challenges, token_from_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let challenges = parse_challenges(&String::from_utf8_lossy(header));
    // Bearer challenges come first.
    if let Some(i) = challenges
        .iter()
        .position(|c| matches!(c, Challenge::Basic))
    {
        assert!(
            challenges[i..]
                .iter()
                .all(|c| matches!(c, Challenge::Basic)),
            "{challenges:?}"
        );
    }
    let _ = token_from_response(body, "https://auth.example/token");
});
