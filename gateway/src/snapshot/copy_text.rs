//! COPY's text format: a line's tab-separated fields, with `\N` for NULL and backslash
//! escapes undone.

use std::borrow::Cow;

/// Splits COPY text, whole lines of `n` fields, calling `row` with each line's values
/// (`None` is NULL). One pass over the bytes finds fields, line ends and escapes alike:
/// rows are short, and a search per field would cost more than the bytes it skips. Values
/// without escapes borrow from `text`.
pub(super) fn for_each_copy_line<'a, E: From<String>>(
    text: &'a str,
    n: usize,
    mut row: impl FnMut(&[Option<Cow<'a, str>>]) -> Result<(), E>,
) -> Result<(), E> {
    let mut values = Vec::with_capacity(n);
    let mut start = 0;
    let mut escaped = false;
    for (i, &b) in text.as_bytes().iter().enumerate() {
        match b {
            // Tabs and line ends inside values arrive escaped: these end a field.
            b'\t' | b'\n' => {
                // Cut at ASCII bytes, so always at a character boundary.
                values.push(copy_value(&text[start..i], escaped)?);
                start = i + 1;
                escaped = false;
                if b == b'\n' {
                    if values.len() != n {
                        return Err(format!("COPY row has {} columns, expected {n}", values.len()).into());
                    }
                    row(&values)?;
                    values.clear();
                }
            }
            b'\\' => escaped = true,
            _ => {}
        }
    }
    if start != text.len() {
        return Err("COPY output ended mid-row".to_string().into());
    }
    Ok(())
}

fn copy_value(raw: &str, escaped: bool) -> Result<Option<Cow<'_, str>>, String> {
    Ok(match raw {
        "\\N" => None,
        raw if escaped => Some(Cow::Owned(
            String::from_utf8(unescape_copy(raw.as_bytes())).map_err(|_| "COPY value is not UTF-8".to_string())?,
        )),
        raw => Some(Cow::Borrowed(raw)),
    })
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
        let collect = |text| {
            let mut rows = Vec::new();
            for_each_copy_line::<String>(text, 3, |values| {
                rows.push(values.to_vec());
                Ok(())
            })
            .map(|()| rows)
        };
        let rows = collect("1\t\\N\tx\\ty\n\\\\N\t\t\n").unwrap();
        let owned = |s: &str| Some(Cow::Owned(s.to_string()));
        assert_eq!(
            rows,
            [vec![Some(Cow::Borrowed("1")), None, owned("x\ty")], vec![owned("\\N"), owned(""), owned("")]]
        );
        assert!(collect("1\t2\n").is_err(), "a row short of columns");
        assert!(collect("1\t2\t3").is_err(), "a row without its line end");
    }
}
