//! The signed order document (`edgepatch-order`, from `edgepatch-builder order`): what an
//! operator tells nodes to do about one cycle. Pure: bytes in, a checked order out.
//!
//! ```text
//! edgepatch-order 1
//! kind rollback|halt|resume   rollback: nodes with the cycle roll back, all refuse it;
//!                             halt: nodes that have not installed it wait; resume: lift a halt
//! variant debian-12-amd64
//! cycle 20261201-build-2      the one cycle the order is about
//! issued 1795000000
//! expires 1796209600
//! --- signatures
//! ```

use crate::bundle::keys::TrustedKey;
use crate::support::kv::Record;

pub const DOC_TYPE: &str = "edgepatch-order";
pub const KINDS: [&str; 3] = ["rollback", "halt", "resume"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub kind: String,
    pub variant: String,
    pub cycle: String,
    pub issued: u64,
    pub expires: u64,
}

impl Order {
    /// Check the signature (one trusted release key), then the fields.
    pub fn open(doc: &[u8], trusted: &[TrustedKey]) -> Result<Order, OrderError> {
        let rec = crate::bundle::signed::open(doc, DOC_TYPE, trusted, 1)
            .map_err(OrderError::Authenticity)?;
        Order::from_record(&rec).map_err(OrderError::Integrity)
    }

    /// The fields of an order whose signature was checked.
    pub fn from_record(rec: &Record) -> Result<Order, String> {
        let field = |k: &str| {
            rec.get(k)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("order has no {k}"))
        };
        let kind = field("kind")?;
        if !KINDS.contains(&kind.as_str()) {
            return Err(format!("unknown order kind {kind:?}"));
        }
        Ok(Order {
            kind,
            variant: field("variant")?,
            cycle: field("cycle")?,
            issued: rec.num("issued").unwrap_or(0),
            expires: rec
                .num("expires")
                .ok_or_else(|| "order has no expires".to_string())?,
        })
    }
}

/// Why an order was refused: its signature (exit 3) or its content (exit 2).
#[derive(Debug)]
pub enum OrderError {
    Authenticity(String),
    Integrity(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked() {
        let ok = Record::parse("kind halt\nvariant v\ncycle c\nissued 1\nexpires 9\n");
        let o = Order::from_record(&ok).unwrap();
        assert_eq!(
            (o.kind.as_str(), o.cycle.as_str(), o.expires),
            ("halt", "c", 9)
        );
        for bad in [
            "kind reboot\nvariant v\ncycle c\nexpires 9\n",
            "kind halt\nvariant v\nexpires 9\n",
            "kind halt\nvariant v\ncycle c\n",
            "kind halt\nvariant v\ncycle \nexpires 9\n",
        ] {
            assert!(Order::from_record(&Record::parse(bad)).is_err(), "{bad}");
        }
    }
}
