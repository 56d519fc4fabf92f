//! Input chosen to break parsers, queries and logs, for the hostile-input tests.

/// Strings that have broken parsers, SQL, JSON, logs and terminals somewhere: empty and
/// blank, injection attempts, control and bidirectional characters, emoji and other wide
/// text, numbers that overflow, paths that climb, an almost-UUID, a trailing newline.
pub const NASTY_STRINGS: &[&str] = &[
    "",
    " ",
    "'; DROP TABLE users; --",
    "\" OR 1=1 --",
    "{\"$ne\": null}",
    "</script><script>alert(1)</script>",
    "\u{0}\u{1}\u{7f}",
    "\u{202e}evil\u{202d}",
    "😀😀😀",
    "ﾟ･✿ヾ╲(｡◕‿◕｡)╱✿･ﾟ",
    "a@b",
    "@@",
    "null",
    "-1",
    "9999999999999999999999",
    "../../etc/passwd",
    "%00",
    "EUR\n",
    "00000000-0000-0000-0000-00000000000g",
];
