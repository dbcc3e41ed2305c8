//! Reading input lines with a length bound, so that one huge line cannot take the process's memory.

use std::io::{self, BufRead};

pub use riskgate::replay::MAX_LINE_BYTES;

/// One input line.
pub enum Line {
    /// The line's bytes, without the line ending.
    Text(Vec<u8>),
    /// The line was longer than the limit; it was skipped. Holds its length.
    TooLong(usize),
}

/// Reads the next line into a fresh buffer; `None` at the end of input.
pub fn next_line(r: &mut impl BufRead) -> io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let mut len = 0usize;
    let mut any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1),
            None => (chunk, chunk.len()),
        };
        len += part.len();
        if len <= MAX_LINE_BYTES {
            buf.extend_from_slice(part);
        }
        let ended = done > part.len();
        r.consume(done);
        if ended {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(if len > MAX_LINE_BYTES {
        Line::TooLong(len)
    } else {
        Line::Text(buf)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_bounds_them() {
        let mut input = Vec::new();
        input.extend_from_slice(b"a\r\nbb\n");
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 5));
        input.extend_from_slice(b"\nlast");
        let mut r = io::BufReader::with_capacity(1000, &input[..]);
        let mut got = Vec::new();
        while let Some(l) = next_line(&mut r).unwrap() {
            got.push(match l {
                Line::Text(t) => String::from_utf8(t).unwrap(),
                Line::TooLong(n) => format!("too long {n}"),
            });
        }
        assert_eq!(
            got,
            [
                "a",
                "bb",
                &format!("too long {}", MAX_LINE_BYTES + 5),
                "last"
            ]
        );
    }
}
