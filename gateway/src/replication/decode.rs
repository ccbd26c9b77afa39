//! Decodes pgoutput (protocol version 1) messages into [`shapes::change`] values. Begin and
//! Commit are framed by the transport; this module handles the messages between them.
//! Malformed input is an error, never a panic.

use bytes::{Buf, Bytes};
use shapes::change::{Cell, Change, Relation, Tuple};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("pgoutput message truncated")]
    Truncated,
    #[error("pgoutput message has an unexpected byte {0:#04x} where {1} was expected")]
    Unexpected(u8, &'static str),
    #[error("pgoutput text value is not valid UTF-8")]
    NotUtf8,
    #[error("binary tuple values are not supported (do not enable binary pgoutput)")]
    Binary,
}

/// One decoded pgoutput message.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Relation(Relation),
    Change {
        relation: u32,
        change: Change,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Type, Origin and logical-decoding messages: nothing for shapes.
    Ignored,
}

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.0.remaining() < n { Err(DecodeError::Truncated) } else { Ok(()) }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let end = self.0.iter().position(|b| *b == 0).ok_or(DecodeError::Truncated)?;
        let s = std::str::from_utf8(&self.0[..end]).map_err(|_| DecodeError::NotUtf8)?.to_string();
        self.0.advance(end + 1);
        Ok(s)
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.0.split_to(n))
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.u16()? as usize;
        // Each column takes at least one byte; refuse counts the message cannot hold.
        self.need(n)?;
        let mut cells = Vec::with_capacity(n);
        for _ in 0..n {
            cells.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Cell::from_utf8(self.bytes(len)?).ok_or(DecodeError::NotUtf8)?
                }
                b'b' => return Err(DecodeError::Binary),
                other => {
                    return Err(DecodeError::Unexpected(other, "a tuple column kind (n, u, t)"));
                }
            });
        }
        Ok(cells)
    }
}

pub fn decode(data: Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader(data);
    Ok(match r.u8()? {
        b'R' => {
            let oid = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.u16()? as usize;
            r.need(n)?;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let _flags = r.u8()?;
                let col = r.cstr()?;
                let type_oid = r.u32()?;
                let _typmod = r.u32()?;
                columns.push((col, type_oid));
            }
            Message::Relation(Relation { oid, schema, name, replica_identity, columns })
        }
        b'I' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => Message::Change { relation, change: Change::Insert { new: r.tuple()? } },
                other => return Err(DecodeError::Unexpected(other, "N")),
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let (old, old_is_full, marker) = match r.u8()? {
                k @ (b'K' | b'O') => {
                    let old = r.tuple()?;
                    (Some(old), k == b'O', r.u8()?)
                }
                m => (None, false, m),
            };
            if marker != b'N' {
                return Err(DecodeError::Unexpected(marker, "N"));
            }
            Message::Change { relation, change: Change::Update { old, old_is_full, new: r.tuple()? } }
        }
        b'D' => {
            let relation = r.u32()?;
            match r.u8()? {
                k @ (b'K' | b'O') => {
                    Message::Change { relation, change: Change::Delete { old: r.tuple()?, old_is_full: k == b'O' } }
                }
                other => return Err(DecodeError::Unexpected(other, "K or O")),
            }
        }
        b'T' => {
            let n = r.u32()? as usize;
            let _options = r.u8()?;
            r.need(n.saturating_mul(4))?;
            let relations = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate { relations }
        }
        b'Y' | b'O' | b'M' => Message::Ignored,
        other => return Err(DecodeError::Unexpected(other, "a pgoutput message type")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tuple(cells: &[Option<&str>]) -> Vec<u8> {
        let mut v = (cells.len() as u16).to_be_bytes().to_vec();
        for c in cells {
            match c {
                None => v.push(b'n'),
                Some(s) => {
                    v.push(b't');
                    v.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    v.extend_from_slice(s.as_bytes());
                }
            }
        }
        v
    }

    #[test]
    fn decodes_relation_and_changes() {
        let mut rel = vec![b'R'];
        rel.extend_from_slice(&16384u32.to_be_bytes());
        rel.extend_from_slice(b"public\0items\0f");
        rel.extend_from_slice(&2u16.to_be_bytes());
        for (name, ty) in [("id", 20u32), ("title", 25)] {
            rel.push(1);
            rel.extend_from_slice(name.as_bytes());
            rel.push(0);
            rel.extend_from_slice(&ty.to_be_bytes());
            rel.extend_from_slice(&(-1i32).to_be_bytes());
        }
        let Message::Relation(r) = decode(Bytes::from(rel)).unwrap() else { panic!() };
        assert_eq!(r.columns, vec![("id".into(), 20), ("title".into(), 25)]);
        assert_eq!(r.replica_identity, b'f');

        let mut upd = vec![b'U'];
        upd.extend_from_slice(&16384u32.to_be_bytes());
        upd.push(b'O');
        upd.extend_from_slice(&tuple(&[Some("1"), Some("a")]));
        upd.push(b'N');
        upd.extend_from_slice(&tuple(&[Some("1"), None]));
        let m = decode(Bytes::from(upd)).unwrap();
        assert_eq!(
            m,
            Message::Change {
                relation: 16384,
                change: Change::Update {
                    old: Some(vec![Cell::text("1"), Cell::text("a")]),
                    old_is_full: true,
                    new: vec![Cell::text("1"), Cell::Null]
                }
            }
        );
    }

    #[test]
    fn truncated_messages_are_errors() {
        assert_eq!(decode(Bytes::from_static(b"I\0\0")), Err(DecodeError::Truncated));
        assert_eq!(decode(Bytes::from_static(b"")), Err(DecodeError::Truncated));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(Bytes::from(data));
        }

        #[test]
        fn arbitrary_tails_of_valid_prefixes_never_panic(kind in prop::sample::select(vec![b'R', b'I', b'U', b'D', b'T']), tail in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut data = vec![kind];
            data.extend(tail);
            let _ = decode(Bytes::from(data));
        }
    }
}
