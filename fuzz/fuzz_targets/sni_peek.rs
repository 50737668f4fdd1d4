//! The TLS ClientHello peek of `protocol: tcp` listeners (`key::sni::peek_sni`), on arbitrary
//! bytes and on their prefixes, as the proxy calls it while the hello arrives. Checked: no
//! panic; a name found is a valid DNS name; reading more bytes never takes back an answer
//! (once a prefix says "found" or "absent", the whole input says the same).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::DnsName;
use sessiongate::key::sni::{peek_sni, SniPeek, MAX_HELLO_BYTES};

fuzz_target!(|data: &[u8]| {
    let whole = peek_sni(data);
    if let SniPeek::Found(name) = &whole {
        assert!(DnsName::try_from(name.as_str()).is_ok(), "{name:?}");
    }
    // The proxy reads in pieces of up to 4 KiB and asks again after each; a few prefixes
    // (halves, the record boundary) stand for that.
    for cut in [
        data.len() / 2,
        data.len() * 3 / 4,
        5,
        data.len().saturating_sub(1),
    ] {
        if cut >= data.len() {
            continue;
        }
        match peek_sni(&data[..cut]) {
            SniPeek::NeedMore => {}
            settled => assert_eq!(settled, whole, "prefix of {cut} bytes"),
        }
    }
    if data.len() >= MAX_HELLO_BYTES {
        assert_ne!(whole, SniPeek::NeedMore, "waits past the hello limit");
    }
});
