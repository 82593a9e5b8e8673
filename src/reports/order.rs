//! Orders, months, and reading one CSV row into an order.

use std::fmt;
use std::str::FromStr;

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

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

/// An order's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Placed,
    Approved,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    /// Every status.
    pub const ALL: [OrderStatus; 4] = [
        OrderStatus::Placed,
        OrderStatus::Approved,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    /// The CSV spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Approved => "approved",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// A small number for storage.
    pub fn as_u8(self) -> u8 {
        match self {
            OrderStatus::Placed => 1,
            OrderStatus::Approved => 2,
            OrderStatus::Delivered => 3,
            OrderStatus::Cancelled => 4,
        }
    }

    /// The inverse of `as_u8`.
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_u8() == value)
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A calendar month in UTC, the unit reports cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: i32,
    month: u8,
}

impl Month {
    /// The month that contains a UTC time given in microseconds since the
    /// Unix epoch.
    pub fn of_micros(micros: i64) -> Self {
        let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Self {
            year: time.year(),
            month: u8::from(time.month()),
        }
    }

    /// Builds a month; `month` is 1 to 12.
    pub fn new(year: i32, month: u8) -> Option<Self> {
        ((1..=12).contains(&month) && (0..=9999).contains(&year)).then_some(Self { year, month })
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.year
    }

    /// The month number, 1 to 12.
    pub fn month(self) -> u8 {
        self.month
    }

    /// The month after this one.
    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Six bytes that sort like months: the storage key prefix.
    pub fn key(self) -> [u8; 6] {
        let text = format!("{:04}{:02}", self.year, self.month);
        let mut out = [0u8; 6];
        out.copy_from_slice(text.as_bytes());
        out
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// A month that is not "YYYY-MM".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("month must have the form YYYY-MM, such as 2024-03")]
pub struct MonthError;

impl FromStr for Month {
    type Err = MonthError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = text.as_bytes();
        if bytes.len() != 7 || bytes[4] != b'-' {
            return Err(MonthError);
        }
        let digits = |range: std::ops::Range<usize>| -> Result<u32, MonthError> {
            let part = &text[range];
            if part.bytes().all(|b| b.is_ascii_digit()) {
                part.parse().map_err(|_| MonthError)
            } else {
                Err(MonthError)
            }
        };
        let year = digits(0..4)? as i32;
        let month = digits(5..7)? as u8;
        Month::new(year, month).ok_or(MonthError)
    }
}

/// One order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub order_id: String,
    /// Microseconds since the Unix epoch, UTC.
    pub created_at: i64,
    pub customer_id: String,
    pub status: OrderStatus,
    pub amount_cents: i64,
}

impl Order {
    /// The month it belongs to.
    pub fn month(&self) -> Month {
        Month::of_micros(self.created_at)
    }

    /// `created_at` in RFC 3339, UTC, to the microsecond.
    pub fn created_at_rfc3339(&self) -> String {
        format_micros(self.created_at)
    }
}

/// Formats microseconds since the epoch as RFC 3339 in UTC.
pub fn format_micros(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.to_offset(UtcOffset::UTC).format(&Rfc3339).ok())
        .unwrap_or_default()
}

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
    fn months_parse_strictly_and_order_by_time() {
        let m: Month = "2024-03".parse().unwrap();
        assert_eq!(m.to_string(), "2024-03");
        assert_eq!(m.next().to_string(), "2024-04");
        assert_eq!(
            "2024-12".parse::<Month>().unwrap().next().to_string(),
            "2025-01"
        );
        for bad in [
            "2024-13",
            "2024-00",
            "2024-3",
            "24-03",
            "2024/03",
            "abcd-ef",
            "2024-03-01",
            "",
        ] {
            assert!(bad.parse::<Month>().is_err(), "{bad}");
        }
        assert!(Month::new(2024, 2).unwrap().key() < Month::new(2024, 10).unwrap().key());
    }

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
