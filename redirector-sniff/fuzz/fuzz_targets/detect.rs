//! `detect` on every prefix of the input, under a configuration taken from its first bytes:
//! no panic, a final verdict never changes as more bytes arrive, `NeedMore` only below the
//! size limit, `TooLarge` only at or past it (or past the header count).
#![no_main]

use libfuzzer_sys::fuzz_target;
use redirector_sniff::detect::{detect, DetectConfig, Detection, MAX_HEADERS};
use redirector_sniff_fuzz::MAX_INPUT;

fuzz_target!(|data: &[u8]| {
    let [a, b, c, rest @ ..] = data else {
        return;
    };
    let input = &rest[..rest.len().min(MAX_INPUT)];
    let cfg = DetectConfig {
        ws_paths: match c % 3 {
            0 => Vec::new(),
            1 => vec!["/ws".to_string()],
            _ => vec!["/api".to_string(), "/ws/chat".to_string()],
        },
        // The CLI accepts 64 and up.
        max_header_bytes: 64 + usize::from(u16::from_le_bytes([*a, *b]) % 2048),
    };
    let mut first_final: Option<(usize, Detection)> = None;
    for len in 0..=input.len() {
        let prefix = &input[..len];
        let verdict = detect(prefix, &cfg);
        match verdict {
            Detection::NeedMore => assert!(len < cfg.max_header_bytes, "NeedMore at {len}"),
            Detection::TooLarge => {
                let lines = prefix.iter().filter(|&&b| b == b'\n').count();
                assert!(
                    len >= cfg.max_header_bytes || lines > MAX_HEADERS,
                    "TooLarge at {len}, limit {}",
                    cfg.max_header_bytes
                );
            }
            _ => {}
        }
        match first_final {
            Some((at, earlier)) => {
                assert_eq!(verdict, earlier, "changed at {len} after final at {at}")
            }
            None if verdict != Detection::NeedMore => first_final = Some((len, verdict)),
            None => {}
        }
    }
});
