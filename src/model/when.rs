//! When a schedule ticks: a cron expression read on the clock of an IANA
//! time zone, or a plain interval counted from the Unix epoch. Parsing
//! names the field at fault; [`When::next_after`] is the one place a next
//! tick is computed, and [`When::describe`] says it in words.
//!
//! Across daylight-saving changes a cron's wall-clock time that does not
//! exist that day ticks at the first time after the change, and one that
//! comes twice ticks once (at the first); an expression of every second,
//! minute or hour ticks through both halves of a repeated hour.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// The shortest interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest cron expression and time zone name accepted, in bytes.
pub const MAX_TEXT: usize = 256;

/// A schedule's clock.
#[derive(Clone)]
pub enum When {
    /// A cron expression in a time zone.
    Cron(Box<CronClock>),
    /// Every so long, from the Unix epoch.
    Every(Duration),
}

/// A parsed cron expression and its zone.
#[derive(Clone)]
pub struct CronClock {
    expression: String,
    zone_name: String,
    cron: Cron,
    zone: TimeZone,
}

/// A clock that could not be read: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhenError {
    pub field: &'static str,
    pub message: String,
}

impl WhenError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl When {
    /// A cron clock: 5 fields, or 6 with seconds first, read in `zone`
    /// (UTC when empty). An expression that never matches is refused.
    pub fn cron(expression: &str, zone: &str) -> Result<Self, WhenError> {
        let when = Self::stored_cron(expression, zone)?;
        if when.next_after(SystemTime::now()).is_none() {
            return Err(WhenError::new(
                "cron",
                format!("{:?} never matches a time to come", expression.trim()),
            ));
        }
        Ok(when)
    }

    /// A cron clock read back from storage: parsed, without looking for
    /// its next time (it was checked when it was made).
    pub fn stored_cron(expression: &str, zone: &str) -> Result<Self, WhenError> {
        let expression = expression.trim();
        if expression.len() > MAX_TEXT {
            return Err(WhenError::new("cron", "the cron expression is too long"));
        }
        let fields = expression.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(WhenError::new(
                "cron",
                format!(
                    "{expression:?} has {fields} fields; a cron expression has 5 \
                     (minute hour day-of-month month day-of-week) or 6 (seconds first)"
                ),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| WhenError::new("cron", format!("{expression:?} is not valid: {e}")))?;
        let zone_name = if zone.is_empty() { "UTC" } else { zone };
        if zone_name.len() > MAX_TEXT {
            return Err(WhenError::new(
                "time_zone",
                "the time zone name is too long",
            ));
        }
        let tz = TimeZone::get(zone_name).map_err(|_| {
            WhenError::new(
                "time_zone",
                format!("{zone_name:?} is not an IANA time zone (such as Europe/Berlin)"),
            )
        })?;
        Ok(When::Cron(Box::new(CronClock {
            expression: expression.to_owned(),
            zone_name: zone_name.to_owned(),
            cron,
            zone: tz,
        })))
    }

    /// An interval clock of at least [`MIN_INTERVAL`].
    pub fn every(interval: Duration) -> Result<Self, WhenError> {
        if interval < MIN_INTERVAL {
            return Err(WhenError::new(
                "interval",
                "the interval must be at least one second",
            ));
        }
        Ok(When::Every(interval))
    }

    /// The first tick strictly after `time`; None when there is none.
    pub fn next_after(&self, time: SystemTime) -> Option<SystemTime> {
        match self {
            When::Every(interval) => {
                let step = interval.as_micros();
                let since = time.duration_since(UNIX_EPOCH).ok()?.as_micros();
                let next = (since / step + 1).checked_mul(step)?;
                Some(UNIX_EPOCH + Duration::from_micros(u64::try_from(next).ok()?))
            }
            When::Cron(clock) => {
                let now = Timestamp::try_from(time).ok()?.to_zoned(clock.zone.clone());
                let next: Zoned = clock.cron.find_next_occurrence(&now, false).ok()?;
                Some(SystemTime::from(next.timestamp()))
            }
        }
    }

    /// The next `count` ticks after `time`.
    pub fn upcoming(&self, time: SystemTime, count: usize) -> Vec<SystemTime> {
        let mut ticks = Vec::with_capacity(count);
        let mut at = time;
        while ticks.len() < count {
            match self.next_after(at) {
                Some(next) => {
                    ticks.push(next);
                    at = next;
                }
                None => break,
            }
        }
        ticks
    }

    /// The cron expression, if it is one.
    pub fn expression(&self) -> Option<&str> {
        match self {
            When::Cron(clock) => Some(&clock.expression),
            When::Every(_) => None,
        }
    }

    /// The time zone's name, for a cron clock.
    pub fn zone(&self) -> Option<&str> {
        match self {
            When::Cron(clock) => Some(&clock.zone_name),
            When::Every(_) => None,
        }
    }

    /// The interval, if it is one.
    pub fn interval(&self) -> Option<Duration> {
        match self {
            When::Every(interval) => Some(*interval),
            When::Cron(_) => None,
        }
    }

    /// The clock in words: "every day at 03:00 Europe/Berlin".
    pub fn describe(&self) -> String {
        match self {
            When::Every(interval) => format!("every {}", words_of_duration(*interval)),
            When::Cron(clock) => match cron_words(&clock.expression) {
                Some(words) => format!("{words} {}", clock.zone_name),
                None => format!("on cron \"{}\" {}", clock.expression, clock.zone_name),
            },
        }
    }
}

impl PartialEq for When {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (When::Every(a), When::Every(b)) => a == b,
            (When::Cron(a), When::Cron(b)) => {
                a.expression == b.expression && a.zone_name == b.zone_name
            }
            _ => false,
        }
    }
}

impl fmt::Debug for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            When::Every(interval) => write!(f, "Every({interval:?})"),
            When::Cron(clock) => write!(f, "Cron({:?}, {:?})", clock.expression, clock.zone_name),
        }
    }
}

/// "5 minutes", "1 hour 30 minutes", "2 seconds".
fn words_of_duration(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    let mut parts = Vec::new();
    for (unit, size) in [
        ("day", 86_400),
        ("hour", 3600),
        ("minute", 60),
        ("second", 1),
    ] {
        let n = secs / size;
        secs %= size;
        if n > 0 {
            parts.push(if n == 1 {
                format!("1 {unit}")
            } else {
                format!("{n} {unit}s")
            });
        }
    }
    let millis = duration.subsec_millis();
    if millis > 0 || parts.is_empty() {
        parts.push(format!("{millis} ms"));
    }
    match parts.as_slice() {
        [one] if one.starts_with("1 ") => one[2..].to_owned(),
        _ => parts.join(" "),
    }
}

/// Words for the common shapes of cron expression; None for the rest,
/// which are shown as written.
fn cron_words(expression: &str) -> Option<String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let (sec, rest) = match fields.len() {
        6 => (fields[0], &fields[1..]),
        _ => ("0", &fields[..]),
    };
    let [min, hour, dom, month, dow] = <[&str; 5]>::try_from(rest).ok()?;
    let number = |f: &str| f.parse::<u32>().ok();
    let step = |f: &str| f.strip_prefix("*/").and_then(|n| n.parse::<u32>().ok());
    // `*/1` is `*`.
    let (sec, min, hour) = (unit_step(sec), unit_step(min), unit_step(hour));
    let every_day = dom == "*" && month == "*" && dow == "*";
    if every_day {
        match (sec, min, hour) {
            ("*", "*", "*") => return Some("every second".into()),
            (s, "*", "*") if number(s) == Some(0) => return Some("every minute".into()),
            (s, "*", "*") if step(s).is_some() => {
                return Some(format!("every {} seconds", step(s)?));
            }
            (s, m, "*") if number(s) == Some(0) && step(m).is_some() => {
                return Some(format!("every {} minutes", step(m)?));
            }
            (s, m, "*") if number(s) == Some(0) && number(m).is_some() => {
                return Some(format!("every hour at minute {}", number(m)?));
            }
            (s, m, h) if number(s) == Some(0) && number(m) == Some(0) && step(h).is_some() => {
                return Some(format!("every {} hours", step(h)?));
            }
            _ => {}
        }
    }
    let (s, m, h) = (number(sec)?, number(min)?, number(hour)?);
    let time = if s == 0 {
        format!("{h:02}:{m:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    };
    match (dom, month, dow) {
        ("*", "*", "*") => Some(format!("every day at {time}")),
        ("*", "*", days) => Some(format!("every {} at {time}", weekdays(days)?)),
        (day, "*", "*") => Some(format!("on day {} of every month at {time}", number(day)?)),
        _ => None,
    }
}

/// A field stepping by one is every value: `*`.
fn unit_step(field: &str) -> &str {
    if field == "*/1" { "*" } else { field }
}

/// "Monday to Friday", "Sunday", "Monday, Wednesday".
fn weekdays(field: &str) -> Option<String> {
    const NAMES: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    let day = |d: &str| -> Option<&str> {
        let upper = d.to_ascii_uppercase();
        match upper.parse::<usize>() {
            Ok(n) => NAMES.get(n % 7).copied(),
            Err(_) => NAMES
                .iter()
                .find(|name| name[..3].eq_ignore_ascii_case(&upper))
                .copied(),
        }
    };
    let parts: Option<Vec<String>> = field
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => Some(format!("{} to {}", day(a)?, day(b)?)),
            None => day(part).map(str::to_owned),
        })
        .collect();
    Some(parts?.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn at(zone: &str, day: jiff::civil::Date, h: i8, mi: i8) -> SystemTime {
        let tz = TimeZone::get(zone).unwrap();
        let zoned = tz
            .to_ambiguous_zoned(day.at(h, mi, 0, 0))
            .earlier()
            .unwrap();
        SystemTime::from(zoned.timestamp())
    }

    fn local(zone: &str, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> SystemTime {
        at(zone, date(y, mo, d), h, mi)
    }

    /// Ticks of a 02:30 daily clock from the day before a change to the
    /// day after: one on every day, the change day included.
    fn daily_0230_over(zone: &str, y: i16, mo: i8, d: i8) -> Vec<SystemTime> {
        let when = When::cron("30 2 * * *", zone).unwrap();
        let day = date(y, mo, d);
        let from = at(zone, day.yesterday().unwrap(), 0, 0);
        let to = at(zone, day.tomorrow().unwrap().tomorrow().unwrap(), 0, 0);
        let mut ticks = Vec::new();
        let mut at = from;
        while let Some(next) = when.next_after(at).filter(|t| *t < to) {
            ticks.push(next);
            at = next;
        }
        ticks
    }

    #[test]
    fn a_daily_0230_runs_once_on_both_change_days() {
        for (zone, spring, autumn) in [
            ("Europe/Berlin", (2026, 3, 29), (2026, 10, 25)),
            ("America/New_York", (2026, 3, 8), (2026, 11, 1)),
        ] {
            for (y, m, d) in [spring, autumn] {
                let ticks = daily_0230_over(zone, y, m, d);
                assert_eq!(ticks.len(), 3, "{zone} {y}-{m}-{d}: {ticks:?}");
                let gaps: Vec<u64> = ticks
                    .windows(2)
                    .map(|w| w[1].duration_since(w[0]).unwrap().as_secs())
                    .collect();
                // Each day once: a day apart, give or take the hour.
                assert!(
                    gaps.iter().all(|g| (82_800..=90_000).contains(g)),
                    "{zone}: {gaps:?}"
                );
            }
        }
        // The spring day's 02:30 does not exist: it runs at 03:00.
        let spring = daily_0230_over("Europe/Berlin", 2026, 3, 29);
        assert_eq!(spring[1], local("Europe/Berlin", 2026, 3, 29, 3, 0));
        // The autumn day's 02:30 comes twice: it runs at the first.
        let autumn = daily_0230_over("America/New_York", 2026, 11, 1);
        assert_eq!(autumn[1], local("America/New_York", 2026, 11, 1, 2, 30));
    }

    #[test]
    fn intervals_count_from_the_epoch() {
        let when = When::every(Duration::from_secs(3600)).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(3600 * 10 + 5);
        assert_eq!(
            when.next_after(t),
            Some(UNIX_EPOCH + Duration::from_secs(3600 * 11))
        );
        let exact = UNIX_EPOCH + Duration::from_secs(3600 * 11);
        assert_eq!(
            when.next_after(exact),
            Some(UNIX_EPOCH + Duration::from_secs(3600 * 12))
        );
    }

    #[test]
    fn six_fields_tick_every_second() {
        let when = When::cron("*/1 * * * * *", "").unwrap();
        let t = UNIX_EPOCH + Duration::from_millis(10_500);
        assert_eq!(
            when.upcoming(t, 2),
            vec![
                UNIX_EPOCH + Duration::from_secs(11),
                UNIX_EPOCH + Duration::from_secs(12)
            ]
        );
    }

    #[test]
    fn bad_clocks_name_their_field() {
        for (cron, zone, field) in [
            ("* * *", "", "cron"),
            ("61 * * * *", "", "cron"),
            ("* * * * * * 2030", "", "cron"),
            ("banana", "", "cron"),
            ("0 0 30 2 *", "", "cron"),
            ("0 3 * * *", "Mars/Olympus", "time_zone"),
        ] {
            let e = When::cron(cron, zone).unwrap_err();
            assert_eq!(e.field, field, "{cron} {zone}: {e:?}");
        }
        assert_eq!(
            When::every(Duration::from_millis(999)).unwrap_err().field,
            "interval"
        );
    }

    #[test]
    fn clocks_in_words() {
        let words = |c: &str| When::cron(c, "Europe/Berlin").unwrap().describe();
        assert_eq!(words("0 3 * * *"), "every day at 03:00 Europe/Berlin");
        assert_eq!(words("*/5 * * * *"), "every 5 minutes Europe/Berlin");
        assert_eq!(words("* * * * * *"), "every second Europe/Berlin");
        assert_eq!(words("*/1 * * * * *"), "every second Europe/Berlin");
        assert_eq!(
            words("30 9 * * MON-FRI"),
            "every Monday to Friday at 09:30 Europe/Berlin"
        );
        assert_eq!(
            words("0 6 1 * *"),
            "on day 1 of every month at 06:00 Europe/Berlin"
        );
        assert_eq!(words("0 0 1 1 *"), "on cron \"0 0 1 1 *\" Europe/Berlin");
        let every = |s| When::every(Duration::from_secs(s)).unwrap().describe();
        assert_eq!(every(60), "every minute");
        assert_eq!(every(90), "every 1 minute 30 seconds");
        assert_eq!(every(7200), "every 2 hours");
    }
}
