//! The wire codec on arbitrary bytes, as both protocol versions: it must
//! never panic, and whatever it decodes and can send (the broker encodes
//! only what a server sends) must decode again.
#![no_main]

use bytes::BytesMut;
use courier::codec::{decode, detect_version, encode, Version};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let _ = detect_version(data, MAX);
    for v in [Version::V4, Version::V5] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(p)) = decode(v, &mut buf, MAX) {
            let mut out = BytesMut::new();
            if encode(v, &p, &mut out).is_ok() && !out.is_empty() {
                let again = decode(v, &mut out, MAX);
                assert!(
                    matches!(again, Ok(Some(_))),
                    "{v:?}: {p:?} encoded to bytes that do not decode: {again:?}"
                );
            }
        }
    }
});
