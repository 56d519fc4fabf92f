//! Any text as a position token, a page cursor and a query string of the read side.
//! Nothing may panic; a token or cursor that parses prints back to one that parses to the
//! same value.

#![no_main]

use event_store::position::Position;
use libfuzzer_sys::fuzz_target;
use service_runtime::query::params::{Cursor, Params};

fuzz_target!(|text: &str| {
    if let Ok(position) = text.parse::<Position>() {
        let again: Position = position
            .to_string()
            .parse()
            .expect("a printed position parses");
        assert_eq!(again, position);
    }
    if let Some(cursor) = Cursor::decode(text) {
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
    }
    let pairs: Vec<(String, String)> = text
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None => (pair.to_owned(), String::new()),
        })
        .collect();
    let names = [
        "limit",
        "cursor",
        "min_position",
        "as_of",
        "as_of_version",
        "state",
        "aggregate",
    ];
    let mut params = Params::new(pairs, &names);
    let _ = params.limit();
    let _ = params.cursor();
    let _ = params.min_position();
    let _ = params.time("as_of");
    let _ = params.version("as_of_version");
    let _ = params.one_of("state", &["running", "failed"]);
    let _ = params.text("aggregate");
    let _ = params.finish();
});
