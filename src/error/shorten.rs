//! User input in error messages, cut to a readable length. A file of its own, below both `error.rs` and the
//! types whose errors quote input (`response.rs`'s `ParseStateError`), so that no two files import each other.

/// Cuts user input for an error message to a readable length, escaping control characters.
pub(crate) fn shorten(v: &str) -> String {
    let mut out: String = v.chars().take(64).flat_map(char::escape_default).collect();
    if v.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}
