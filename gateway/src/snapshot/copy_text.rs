//! COPY's text format: a line's tab-separated fields, with `\N` for NULL and backslash
//! escapes undone.

use std::borrow::Cow;

/// Splits one line of COPY text format into `n` values (`None` is NULL), reusing `values`.
/// Values without escapes borrow from the line.
pub(super) fn parse_copy_line<'a>(
    line: &'a str,
    n: usize,
    values: &mut Vec<Option<Cow<'a, str>>>,
) -> Result<(), String> {
    values.clear();
    // Most lines hold no escape at all: one scan decides for every field.
    let escaped = memchr::memchr(b'\\', line.as_bytes()).is_some();
    let mut start = 0;
    for end in memchr::memchr_iter(b'\t', line.as_bytes()).chain(std::iter::once(line.len())) {
        let raw = &line[start..end];
        start = end + 1;
        values.push(match raw {
            "\\N" => None,
            raw if escaped && raw.contains('\\') => Some(Cow::Owned(
                String::from_utf8(unescape_copy(raw.as_bytes())).map_err(|_| "COPY value is not UTF-8".to_string())?,
            )),
            raw => Some(Cow::Borrowed(raw)),
        });
    }
    if values.len() != n {
        return Err(format!("COPY row has {} columns, expected {n}", values.len()));
    }
    Ok(())
}

fn unescape_copy(raw: &[u8]) -> Vec<u8> {
    if !raw.contains(&b'\\') {
        return raw.to_vec();
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 == raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                for _ in 0..2 {
                    if i < raw.len() && (b'0'..=b'7').contains(&raw[i]) {
                        v = v * 8 + (raw[i] - b'0') as u32;
                        i += 1;
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < raw.len() && raw[i].is_ascii_hexdigit() {
                    v = v * 16 + (raw[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_are_undone() {
        assert_eq!(unescape_copy(br"a\tb\\c\nd"), b"a\tb\\c\nd");
        assert_eq!(unescape_copy(br"\101\x42"), b"AB");
        let mut row = Vec::new();
        parse_copy_line("1\t\\N\tx\\ty", 3, &mut row).unwrap();
        assert_eq!(row, vec![Some(Cow::Borrowed("1")), None, Some(Cow::Owned("x\ty".to_string()))]);
        assert!(parse_copy_line("1\t2", 3, &mut row).is_err());
    }
}
