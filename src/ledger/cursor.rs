//! Event cursors: a position in the feed, `(xid, seq)` of the last delivered event.
//!
//! Clients treat the string as opaque. Its form is `c1.<xid hex>.<seq hex>`; the `c1`
//! prefix versions the format so it can change without misreading old cursors.

use super::JobEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// The writing transaction's id (`xid8`, as a non-negative i64).
    pub xid: i64,
    /// The event's `seq` (orders events of one transaction).
    pub seq: i64,
}

impl Cursor {
    /// Before every event.
    pub const START: Cursor = Cursor { xid: 0, seq: 0 };

    pub fn of(event: &JobEvent) -> Cursor {
        Cursor {
            xid: event.xid,
            seq: event.seq,
        }
    }

    pub fn encode(&self) -> String {
        format!("c1.{:x}.{:x}", self.xid, self.seq)
    }

    /// None for anything that is not a cursor this server wrote.
    pub fn decode(s: &str) -> Option<Cursor> {
        let mut parts = s.strip_prefix("c1.")?.split('.');
        let xid = i64::from_str_radix(parts.next()?, 16).ok()?;
        let seq = i64::from_str_radix(parts.next()?, 16).ok()?;
        if parts.next().is_some() || xid < 0 || seq < 0 {
            return None;
        }
        Some(Cursor { xid, seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let c = Cursor {
            xid: 0x1_0000_0002,
            seq: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in [
            "", "c1.", "c1.1", "c1.1.2.3", "c2.1.2", "c1.x.2", "c1.-1.2", "1.2",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
        assert!(Cursor { xid: 1, seq: 9 } < Cursor { xid: 2, seq: 1 });
    }
}
