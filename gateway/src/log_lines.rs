//! What tools read from the gateway's own log: the address a process listens on. Its
//! "serving shapes" and "standing by" lines carry `listen=` and `pid=`, so a process
//! started with `--listen …:0` can be found, even by the lines of several gateways
//! appending to one log file.

use std::net::SocketAddr;

/// The address process `pid` logged it listens on, if `log` holds that line.
pub fn listening_address(log: &str, pid: u32) -> Option<SocketAddr> {
    let pid = pid.to_string();
    log.lines().find_map(|line| {
        let plain = without_colours(line);
        let field = |name: &str| plain.split(&format!("{name}=")).nth(1)?.split_whitespace().next();
        (field("pid")? == pid).then_some(())?;
        field("listen")?.parse().ok()
    })
}

/// `line` without terminal colour codes (the log is coloured even when written to a file).
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_of_one_process_is_found_among_others() {
        let log = "\u{1b}[2m2026\u{1b}[0m INFO gateway: serving shapes \u{1b}[3mlisten\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:4001 \u{1b}[3mpid\u{1b}[0m\u{1b}[2m=\u{1b}[0m7\n\
                   INFO gateway: another gateway streams from the slot: standing by slot=s listen=127.0.0.1:4002 pid=8\n";
        assert_eq!(listening_address(log, 7), Some("127.0.0.1:4001".parse().unwrap()));
        assert_eq!(listening_address(log, 8), Some("127.0.0.1:4002".parse().unwrap()));
        assert_eq!(listening_address(log, 9), None);
    }
}
