//! Realistic, deterministic order files: the same seed and arguments always
//! give the same bytes, so demos, tests and benchmarks are repeatable.

use std::io::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::rows::COLUMNS;
use crate::model::order::{Month, OrderStatus, format_micros};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// How many orders.
    pub count: u64,
    /// The first and last month (inclusive) orders fall in.
    pub months: (Month, Month),
    /// The random seed.
    pub seed: u64,
}

/// Writes the CSV (header and `spec.count` rows) to `out`.
pub fn write_csv(spec: &Spec, out: &mut impl Write) -> std::io::Result<()> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let start = spec.months.0.start_micros();
    let end = spec.months.1.next().start_micros();
    let customers = (spec.count / 8).max(1);
    writeln!(out, "{}", COLUMNS.join(","))?;
    for i in 0..spec.count {
        let created = rng.random_range(start..end.max(start + 1));
        // Truncated to the second, as order systems usually export.
        let created = created - created.rem_euclid(1_000_000);
        let status = match rng.random_range(0..100) {
            0..40 => OrderStatus::Delivered,
            40..70 => OrderStatus::Approved,
            70..90 => OrderStatus::Placed,
            _ => OrderStatus::Cancelled,
        };
        // Mostly small baskets, a long tail of large ones.
        let amount = if rng.random_bool(0.9) {
            rng.random_range(199..20_000)
        } else {
            rng.random_range(20_000..2_000_000)
        };
        writeln!(
            out,
            "ord-{:x}-{i:010},{},cust-{:08},{},{amount}",
            spec.seed,
            format_micros(created),
            rng.random_range(0..customers),
            status.as_str(),
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::rows::ColumnMap;

    #[test]
    fn the_same_seed_gives_the_same_file_and_every_row_parses() {
        let spec = Spec {
            count: 500,
            months: ("2024-01".parse().unwrap(), "2024-03".parse().unwrap()),
            seed: 7,
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_csv(&spec, &mut a).unwrap();
        write_csv(&spec, &mut b).unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8(a).unwrap();
        let mut lines = text.lines();
        let map = ColumnMap::from_header(lines.next().unwrap().split(',')).unwrap();
        let mut count = 0;
        for (i, line) in lines.enumerate() {
            let fields: Vec<&str> = line.split(',').collect();
            let order = map.parse(i as u64 + 2, &fields).unwrap();
            let month = order.month().to_string();
            assert!(("2024-01".."2024-04").contains(&month.as_str()), "{month}");
            count += 1;
        }
        assert_eq!(count, 500);
    }
}
