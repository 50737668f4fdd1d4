//! The config loader (`config::Config::parse`, what `sessiongate check` and a reload run on a
//! file's text): YAML, then the schema, then validation, on arbitrary UTF-8. Checked: no panic
//! (errors are fine and must say something); a config that validates is accepted again when
//! parsed twice (parsing is a pure function of the text).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sessiongate::config::Config;

fuzz_target!(|text: &str| {
    let file = Path::new("/etc/sessiongate/fuzz.yaml");
    match Config::parse(text, file) {
        Ok(config) => {
            let again = Config::parse(text, file).expect("the same text validates twice");
            assert_eq!(config.listeners.len(), again.listeners.len());
            assert_eq!(config.pools.len(), again.pools.len());
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
