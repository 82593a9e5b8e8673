//! Reading one CSV row into an order: the columns, and what is wrong with a
//! row that does not read.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::model::order::{Order, OrderStatus};

/// The CSV columns, in the order reports write them.
pub const COLUMNS: [&str; 5] = [
    "order_id",
    "created_at",
    "customer_id",
    "status",
    "amount_cents",
];

/// The longest order_id or customer_id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Why one row was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    /// 1-based, the header being row 1.
    pub row: u64,
    /// The column at fault, or empty for the row as a whole.
    pub column: String,
    pub reason: String,
}

/// Where each column sits in the file's rows, as the header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnMap {
    at: [usize; 5],
    width: usize,
}

impl ColumnMap {
    /// Reads the header. Column names may come in any order; unknown extra
    /// columns are ignored. Fails naming the missing columns.
    pub fn from_header<'a>(header: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let names: Vec<&str> = header.into_iter().map(str::trim).collect();
        let mut at = [0usize; 5];
        let mut missing = Vec::new();
        for (slot, column) in COLUMNS.iter().enumerate() {
            match names.iter().position(|n| n == column) {
                Some(i) => at[slot] = i,
                None => missing.push(*column),
            }
        }
        if missing.is_empty() {
            Ok(Self {
                at,
                width: names.len(),
            })
        } else {
            Err(format!(
                "the CSV header must name the columns {}; missing: {}",
                COLUMNS.join(", "),
                missing.join(", ")
            ))
        }
    }

    /// Reads one data row (`row` is its 1-based number in the file).
    pub fn parse(&self, row: u64, fields: &[&str]) -> Result<Order, RowError> {
        let err = |column: &str, reason: String| RowError {
            row,
            column: column.to_owned(),
            reason,
        };
        if fields.len() != self.width {
            return Err(err(
                "",
                format!("expected {} fields, found {}", self.width, fields.len()),
            ));
        }
        let field = |slot: usize| fields[self.at[slot]].trim();
        let id = |slot: usize| -> Result<String, RowError> {
            let value = field(slot);
            if value.is_empty() {
                Err(err(COLUMNS[slot], "must not be empty".into()))
            } else if value.len() > MAX_ID_LEN {
                Err(err(
                    COLUMNS[slot],
                    format!("is longer than {MAX_ID_LEN} bytes"),
                ))
            } else {
                Ok(value.to_owned())
            }
        };
        let order_id = id(0)?;
        let created_at = OffsetDateTime::parse(field(1), &Rfc3339)
            .map_err(|_| {
                err(
                    "created_at",
                    format!("{:?} is not an RFC 3339 timestamp", field(1)),
                )
            })
            .and_then(|t| {
                i64::try_from(t.unix_timestamp_nanos() / 1000)
                    .map_err(|_| err("created_at", "is out of range".into()))
            })?;
        if !(0..=253_402_300_799_000_000).contains(&created_at) {
            return Err(err("created_at", "must be between 1970 and 9999".into()));
        }
        let customer_id = id(2)?;
        let status = OrderStatus::parse(field(3)).ok_or_else(|| {
            err(
                "status",
                format!(
                    "{:?} is not one of placed, approved, delivered, cancelled",
                    field(3)
                ),
            )
        })?;
        let amount_cents = field(4)
            .parse::<i64>()
            .ok()
            .filter(|a| *a >= 0)
            .ok_or_else(|| {
                err(
                    "amount_cents",
                    format!("{:?} is not a non-negative integer", field(4)),
                )
            })?;
        Ok(Order {
            order_id,
            created_at,
            customer_id,
            status,
            amount_cents,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_may_come_in_any_order() {
        let map = ColumnMap::from_header([
            "status",
            "amount_cents",
            "order_id",
            "customer_id",
            "created_at",
        ])
        .unwrap();
        let order = map
            .parse(
                2,
                &["placed", "1250", "o-1", "c-9", "2024-03-05T10:00:00+02:00"],
            )
            .unwrap();
        assert_eq!(order.order_id, "o-1");
        assert_eq!(order.amount_cents, 1250);
        assert_eq!(order.created_at_rfc3339(), "2024-03-05T08:00:00Z");
        assert_eq!(order.month().to_string(), "2024-03");
    }

    #[test]
    fn a_header_missing_columns_says_which() {
        let err = ColumnMap::from_header(["order_id", "status"]).unwrap_err();
        assert!(
            err.contains("created_at") && err.contains("amount_cents"),
            "{err}"
        );
    }

    #[test]
    fn bad_rows_name_the_column() {
        let map = ColumnMap::from_header(COLUMNS).unwrap();
        let cases: [(&[&str], &str); 7] = [
            (
                &["", "2024-03-01T00:00:00Z", "c", "placed", "1"],
                "order_id",
            ),
            (&["o", "yesterday", "c", "placed", "1"], "created_at"),
            (
                &["o", "2024-03-01T00:00:00Z", "", "placed", "1"],
                "customer_id",
            ),
            (
                &["o", "2024-03-01T00:00:00Z", "c", "shipped", "1"],
                "status",
            ),
            (
                &["o", "2024-03-01T00:00:00Z", "c", "placed", "-5"],
                "amount_cents",
            ),
            (
                &["o", "2024-03-01T00:00:00Z", "c", "placed", "1.5"],
                "amount_cents",
            ),
            (&["o", "2024-03-01T00:00:00Z", "c"], ""),
        ];
        for (fields, column) in cases {
            let e = map.parse(7, fields).unwrap_err();
            assert_eq!(e.column, column, "{fields:?}: {e:?}");
            assert_eq!(e.row, 7);
        }
    }
}
