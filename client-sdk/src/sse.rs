//! Server-Sent Events framing: text as it arrives in, the `data` of each whole event out.
//! Comments (the gateway's keep-alives) and other fields are skipped.

/// Splits a stream of text into events.
#[derive(Debug, Default)]
pub struct EventParser {
    /// The unfinished last line.
    line: String,
    /// The `data` lines of the event so far.
    data: Option<String>,
    /// The previous chunk ended in `\r`: a `\n` starting this one belongs to it.
    after_cr: bool,
}

impl EventParser {
    /// Takes the next piece of text; returns the data of each event it completes.
    pub fn feed(&mut self, chunk: &str) -> Vec<String> {
        let mut events = Vec::new();
        let mut rest = chunk;
        if self.after_cr {
            rest = rest.strip_prefix('\n').unwrap_or(rest);
            self.after_cr = false;
        }
        while let Some(end) = rest.bytes().position(|b| b == b'\r' || b == b'\n') {
            if self.line.is_empty() {
                self.take_line(&rest[..end], &mut events);
            } else {
                // Only a line split between chunks is copied.
                self.line.push_str(&rest[..end]);
                let line = std::mem::take(&mut self.line);
                self.take_line(&line, &mut events);
            }
            let crlf = rest[end..].starts_with("\r\n");
            if rest[end..].starts_with('\r') && end + 1 == rest.len() {
                self.after_cr = true;
            }
            rest = &rest[end + if crlf { 2 } else { 1 }..];
        }
        self.line.push_str(rest);
        events
    }

    fn take_line(&mut self, line: &str, events: &mut Vec<String>) {
        if line.is_empty() {
            events.extend(self.data.take());
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_come_out_whole() {
        let mut p = EventParser::default();
        assert_eq!(p.feed("data: {\"a\""), Vec::<String>::new());
        assert_eq!(p.feed(":1}\n"), Vec::<String>::new());
        assert_eq!(p.feed("\n: keep-alive\n\ndata: 2\n\ndata:3\n"), vec!["{\"a\":1}", "2"]);
        assert_eq!(p.feed("\n"), vec!["3"]);
    }

    #[test]
    fn any_line_ending_and_multi_line_data() {
        let mut p = EventParser::default();
        assert_eq!(p.feed("data: a\r\ndata: b\r"), Vec::<String>::new());
        assert_eq!(p.feed("\n\r\nevent: x\rdata: c\r\r"), vec!["a\nb", "c"]);
        assert_eq!(p.feed("id: 1\n\n"), Vec::<String>::new(), "no data, no event");
    }
}
