//! `detect_sni` on every prefix of the input, with a limit taken from its first bytes: no
//! panic, a final verdict never changes as more bytes arrive, `NeedMore` only below the
//! limit, `TooLarge` only at or past it, server names lower-case and non-empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redirector_sniff::sni::{detect_sni, SniDetection};
use redirector_sniff_fuzz::MAX_INPUT;

fuzz_target!(|data: &[u8]| {
    let [a, b, rest @ ..] = data else {
        return;
    };
    let input = &rest[..rest.len().min(MAX_INPUT)];
    let max_bytes = 32 + usize::from(u16::from_le_bytes([*a, *b]) % 4096);
    let mut first_final: Option<(usize, SniDetection)> = None;
    for len in 0..=input.len() {
        let verdict = detect_sni(&input[..len], max_bytes);
        match &verdict {
            SniDetection::NeedMore => assert!(len < max_bytes, "NeedMore at {len}"),
            SniDetection::TooLarge => assert!(len >= max_bytes, "TooLarge at {len}"),
            SniDetection::ServerName(name) => assert!(
                !name.is_empty() && !name.bytes().any(|b| b.is_ascii_uppercase()),
                "server name {name:?}"
            ),
            _ => {}
        }
        match &first_final {
            Some((at, earlier)) => {
                assert_eq!(&verdict, earlier, "changed at {len} after final at {at}")
            }
            None if verdict != SniDetection::NeedMore => first_final = Some((len, verdict)),
            None => {}
        }
    }
});
