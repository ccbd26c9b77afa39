//! What a snapshot saw: `pg_current_snapshot()`, and which transactions it contains.

/// `pg_current_snapshot()` of a shape's snapshot transaction.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

impl SnapshotInfo {
    /// Parses `xmin:xmax:xip,xip`.
    pub fn parse(s: &str) -> Option<SnapshotInfo> {
        let mut parts = s.splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list.split(',').map(|x| x.parse().ok()).collect::<Option<_>>()?,
        };
        Some(SnapshotInfo { xmin, xmax, xip })
    }

    /// Whether the snapshot already contains the effects of transaction `xid` (32-bit, as the
    /// stream reports it; compared modulo 2^32 like PostgreSQL does).
    pub fn contains(&self, xid: u32) -> bool {
        let precedes = |a: u32, b: u32| (a.wrapping_sub(b) as i32) < 0;
        precedes(xid, self.xmin as u32)
            || (precedes(xid, self.xmax as u32) && !self.xip.iter().any(|x| *x as u32 == xid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_visibility_follows_postgres_rules() {
        let s = SnapshotInfo::parse("100:105:101,103").unwrap();
        assert!(s.contains(99));
        assert!(!s.contains(101), "in progress at snapshot time");
        assert!(s.contains(102));
        assert!(!s.contains(105), "started after the snapshot");
        assert!(!s.contains(200));
        assert_eq!(SnapshotInfo::parse("5:5:").unwrap().xip, Vec::<u64>::new());
        let wrapped = SnapshotInfo { xmin: (1u64 << 32) + 5, xmax: (1u64 << 32) + 10, xip: vec![] };
        assert!(wrapped.contains(u32::MAX - 3), "xids before the wrap precede xmin");
        assert!(!wrapped.contains(12));
    }
}
