//! Orders and months: the data the report service imports and reports on.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

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

    /// Parses the CSV spelling.
    pub fn parse(text: &str) -> Option<Self> {
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

    /// The month as the time crate names it (`month` is always 1 to 12).
    fn calendar_month(self) -> time::Month {
        time::Month::try_from(self.month).unwrap_or(time::Month::January)
    }

    /// Its first instant, in microseconds since the Unix epoch.
    pub fn start_micros(self) -> i64 {
        let start = time::Date::from_calendar_date(self.year, self.calendar_month(), 1)
            .unwrap_or(time::Date::MIN)
            .midnight()
            .assume_utc();
        (start.unix_timestamp_nanos() / 1000) as i64
    }

    /// How many days it has.
    pub fn days(self) -> u8 {
        self.calendar_month().length(self.year)
    }

    /// Its English name and year, such as "March 2024".
    pub fn long_name(self) -> String {
        format!("{} {}", self.calendar_month(), self.year)
    }

    /// Six bytes that sort like months: the storage key prefix.
    /// (Years outside 0 to 9999, which no order's RFC 3339 time has, are
    /// clamped to them.)
    pub fn key(self) -> [u8; 6] {
        let year = self.year.clamp(0, 9999) as u32;
        let month = u32::from(self.month);
        let digit = |n: u32| b'0' + (n % 10) as u8;
        [
            digit(year / 1000),
            digit(year / 100),
            digit(year / 10),
            digit(year),
            digit(month / 10),
            digit(month),
        ]
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

    /// The least and greatest order_id among `orders` (in byte order, as
    /// both stores keep them); None when there are none. When no stored
    /// order_id lies between the two, none of `orders` is stored.
    pub fn id_range(orders: &[Order]) -> Option<(&str, &str)> {
        let ids = || orders.iter().map(|o| o.order_id.as_str());
        Some((ids().min()?, ids().max()?))
    }

    /// The last row of each order_id among `orders` (the one a store
    /// keeps), in their order.
    pub fn last_of_each(orders: Vec<Order>) -> Vec<Order> {
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(orders.len());
        for (i, order) in orders.iter().enumerate() {
            last.insert(order.order_id.as_str(), i);
        }
        if last.len() == orders.len() {
            return orders;
        }
        let mut keep = vec![false; orders.len()];
        for &i in last.values() {
            keep[i] = true;
        }
        orders
            .into_iter()
            .zip(keep)
            .filter_map(|(order, keep)| keep.then_some(order))
            .collect()
    }
}

/// Running totals over a set of orders: how many, their amount, and how
/// many have each status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub orders: i64,
    /// Saturates rather than wraps.
    pub amount_cents: i64,
    by_status: [i64; 4],
    amount_by_status: [i64; 4],
}

impl Totals {
    /// Counts one more order.
    pub fn add(&mut self, order: &Order) {
        self.orders += 1;
        self.amount_cents = self.amount_cents.saturating_add(order.amount_cents);
        let slot = usize::from(order.status.as_u8() - 1);
        self.by_status[slot] += 1;
        self.amount_by_status[slot] =
            self.amount_by_status[slot].saturating_add(order.amount_cents);
    }

    /// How many of the orders have `status`.
    pub fn with_status(&self, status: OrderStatus) -> i64 {
        self.by_status[usize::from(status.as_u8() - 1)]
    }

    /// The amount of the orders with `status`, in cents.
    pub fn amount_with_status(&self, status: OrderStatus) -> i64 {
        self.amount_by_status[usize::from(status.as_u8() - 1)]
    }

    /// The orders and amount (in cents) leaving out cancelled orders.
    pub fn not_cancelled(&self) -> (i64, i64) {
        (
            self.orders - self.with_status(OrderStatus::Cancelled),
            self.amount_cents
                .saturating_sub(self.amount_with_status(OrderStatus::Cancelled)),
        )
    }
}

/// Formats microseconds since the epoch as RFC 3339 in UTC.
pub fn format_micros(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.to_offset(UtcOffset::UTC).format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_row_of_each_order_id_is_kept_in_place() {
        let row = |id: &str, amount| Order {
            order_id: id.into(),
            created_at: 0,
            customer_id: "c".into(),
            status: OrderStatus::Placed,
            amount_cents: amount,
        };
        let rows = vec![
            row("a", 1),
            row("b", 2),
            row("a", 3),
            row("c", 4),
            row("b", 5),
        ];
        assert_eq!(
            Order::last_of_each(rows),
            vec![row("a", 3), row("c", 4), row("b", 5)]
        );
        let distinct = vec![row("x", 1), row("y", 2)];
        assert_eq!(Order::last_of_each(distinct.clone()), distinct);
    }

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
        assert_eq!(&Month::new(2024, 3).unwrap().key(), b"202403");
        assert_eq!(&Month::new(7, 11).unwrap().key(), b"000711");
    }
}
