//! Positions: PostgreSQL WAL positions ([`Lsn`]) and shape-log offsets ([`LogOffset`]).
//!
//! A log offset is `<tx>_<op>`: `tx` is the commit LSN of a replicated transaction (or 0 for
//! the initial snapshot) and `op` the change's position in it. Offsets order as pairs, with
//! `inf` after every op; `-1` comes before everything.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL WAL position, as the 64-bit integer behind `X/Y`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = OffsetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s.split_once('/').ok_or(OffsetError::Malformed)?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| OffsetError::Malformed)?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| OffsetError::Malformed)?;
        if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
            return Err(OffsetError::Malformed);
        }
        Ok(Lsn(hi << 32 | lo))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OffsetError {
    #[error("has invalid format")]
    Malformed,
}

/// The `op` value that sorts after every real op of a transaction.
const OP_INF: u64 = u64::MAX;

/// A position in a shape log; a request's `offset` is exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogOffset {
    /// `-1`: before everything, i.e. start with the snapshot.
    BeforeAll,
    /// `<tx>_<op>`; `op == u64::MAX` is written `inf`.
    At { tx: u64, op: u64 },
}

impl LogOffset {
    /// `0_inf`: after the whole snapshot, before any replicated change.
    pub const SNAPSHOT_END: LogOffset = LogOffset::At { tx: 0, op: OP_INF };

    pub fn snapshot_chunk(n: u64) -> Self {
        LogOffset::At { tx: 0, op: n }
    }

    pub fn change(lsn: Lsn, op: u64) -> Self {
        LogOffset::At { tx: lsn.0, op }
    }

    /// The snapshot chunk this offset names, if it is one (`0_N`).
    pub fn as_snapshot_chunk(self) -> Option<u64> {
        match self {
            LogOffset::At { tx: 0, op } if op != OP_INF => Some(op),
            _ => None,
        }
    }

    /// The transaction LSN of a replicated-change offset (0 for snapshot offsets).
    pub fn tx(self) -> u64 {
        match self {
            LogOffset::BeforeAll => 0,
            LogOffset::At { tx, .. } => tx,
        }
    }
}

impl fmt::Display for LogOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LogOffset::BeforeAll => f.write_str("-1"),
            LogOffset::At { tx, op: OP_INF } => write!(f, "{tx}_inf"),
            LogOffset::At { tx, op } => write!(f, "{tx}_{op}"),
        }
    }
}

impl FromStr for LogOffset {
    type Err = OffsetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "-1" {
            return Ok(LogOffset::BeforeAll);
        }
        let (tx, op) = s.split_once('_').ok_or(OffsetError::Malformed)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(tx) {
            return Err(OffsetError::Malformed);
        }
        let tx: u64 = tx.parse().map_err(|_| OffsetError::Malformed)?;
        if tx > i64::MAX as u64 {
            return Err(OffsetError::Malformed);
        }
        let op = if op == "inf" {
            OP_INF
        } else if digits(op) {
            let op: u64 = op.parse().map_err(|_| OffsetError::Malformed)?;
            if op == OP_INF {
                return Err(OffsetError::Malformed);
            }
            op
        } else {
            return Err(OffsetError::Malformed);
        };
        Ok(LogOffset::At { tx, op })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_text_is_an_offset_or_a_refusal(s in "\\PC{0,40}|-?[0-9]{0,25}_([0-9]{0,25}|inf)") {
            if let Ok(o) = s.parse::<LogOffset>() {
                prop_assert_eq!(o.to_string().parse::<LogOffset>().unwrap(), o, "prints as it parses");
            }
            if let Ok(l) = s.parse::<Lsn>() {
                prop_assert_eq!(l.to_string().parse::<Lsn>().unwrap(), l);
            }
        }

        #[test]
        fn offsets_round_trip(tx in 0..=i64::MAX as u64, op in 0..=i64::MAX as u64) {
            let o = LogOffset::At { tx, op };
            prop_assert_eq!(o.to_string().parse::<LogOffset>(), Ok(o));
        }
    }

    #[test]
    fn offsets_parse_and_print_as_the_protocol_writes_them() {
        for s in ["-1", "0_0", "0_inf", "27344208_4", "9223372036854775807_2"] {
            assert_eq!(s.parse::<LogOffset>().unwrap().to_string(), s);
        }
        assert_eq!("0_02".parse::<LogOffset>().unwrap().to_string(), "0_2");
    }

    #[test]
    fn malformed_offsets_are_rejected() {
        for s in ["10", "1_2_3", "1_2 ", "10_32.1", "0_-1", "", "_1", "a_1", "now", "-2"] {
            assert!(s.parse::<LogOffset>().is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn offsets_order_by_transaction_then_op_with_inf_last() {
        let o = |s: &str| s.parse::<LogOffset>().unwrap();
        assert!(o("-1") < o("0_0"));
        assert!(o("0_5") < o("0_inf"));
        assert!(o("0_inf") < o("1_0"));
        assert!(o("5_2") < o("5_inf"));
        assert!(o("5_inf") < o("6_0"));
    }

    #[test]
    fn lsn_round_trips_through_postgres_text() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
    }
}
