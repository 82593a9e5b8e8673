//! Flow control: the limits an operator puts on a kind (how many run at
//! once, how fast they start), what a running operation holds of them, and
//! why a queued one waits. Limits are per kind, and within a kind over the
//! whole kind, per concurrency key, or per tenant; every one is global, the
//! same on every node of a cluster.
//!
//! Admission against them is [`Gate`]: both backends load what runs and
//! the token buckets into a [`Usage`] and ask the gate candidate by
//! candidate, so the rules are written once.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

/// How a create asks its operation to run, beside what it does: the
/// same on every create.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSpec {
    /// Higher starts first among the kind's queued operations.
    pub priority: i32,
    /// What the kind's per-key limits count it under.
    pub concurrency_key: Option<String>,
    /// Not to start before this time.
    pub start_at: Option<SystemTime>,
    /// Not started by this time, it ends without running.
    pub expire_at: Option<SystemTime>,
}

/// The longest concurrency key, in bytes.
pub const MAX_KEY: usize = 128;

/// What one limit counts over, within its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitScope {
    /// Every operation of the kind, on every node together.
    Kind,
    /// The operations of one concurrency key; those without a key are not
    /// counted.
    Key,
    /// The operations of one tenant.
    Tenant,
}

impl LimitScope {
    pub const ALL: [LimitScope; 3] = [LimitScope::Kind, LimitScope::Key, LimitScope::Tenant];

    /// The word flags and the wire use: `kind`, `key`, `tenant`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Kind => "kind",
            LimitScope::Key => "key",
            LimitScope::Tenant => "tenant",
        }
    }

    /// Reads a scope word; `all` is the flags' word for the whole kind.
    pub fn parse(word: &str) -> Option<Self> {
        let word = word.trim().to_ascii_lowercase();
        if word == "all" {
            return Some(LimitScope::Kind);
        }
        Self::ALL.into_iter().find(|s| s.as_str() == word)
    }

    /// Its small number in stores.
    pub fn code(self) -> i16 {
        self as i16
    }

    pub fn from_code(code: i16) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Its bit in [`Holds`].
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A token bucket: `count` starts per `per`, with room for `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

/// The units a rate may be given in.
const UNITS: [(&str, u64); 4] = [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)];

impl Rate {
    /// Reads `COUNT/UNIT` (a unit of s, m, h or d), optionally followed by
    /// `:burst=N`; the burst is the count unless given.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (rate, burst) = match text.split_once(":burst=") {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (text, None),
        };
        let (count, unit) = rate
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a rate; write COUNT/UNIT, like 100/s"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("{count:?} in {text:?} is not a whole number"))?;
        let seconds = UNITS
            .iter()
            .find(|(name, _)| *name == unit.trim())
            .map(|(_, seconds)| *seconds)
            .ok_or_else(|| {
                format!("{unit:?} in {text:?} is not a unit; use s, m, h or d (per second, minute, hour or day)")
            })?;
        let burst = match burst {
            Some(b) => b
                .trim()
                .parse()
                .map_err(|_| format!("the burst {b:?} in {text:?} is not a whole number"))?,
            None => count,
        };
        if count == 0 || burst == 0 {
            return Err(format!(
                "{text:?} allows nothing; a rate must be at least 1"
            ));
        }
        Ok(Rate {
            count,
            per: Duration::from_secs(seconds),
            burst,
        })
    }

    /// Tokens gained per microsecond.
    pub fn per_micro(&self) -> f64 {
        f64::from(self.count) / self.per.as_micros() as f64
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.per.as_secs();
        let unit = UNITS
            .iter()
            .find(|(_, s)| *s == secs)
            .map_or("s", |(name, _)| name);
        write!(f, "{}/{unit}", self.count)?;
        if self.burst != self.count {
            write!(f, ":burst={}", self.burst)?;
        }
        Ok(())
    }
}

/// Reads rates written one after another, separated by `;` or spaces.
pub fn parse_rates(text: &str) -> Result<Vec<Rate>, String> {
    text.split([';', ' '])
        .filter(|part| !part.trim().is_empty())
        .map(Rate::parse)
        .collect()
}

/// Writes rates as [`parse_rates`] reads them.
pub fn format_rates(rates: &[Rate]) -> String {
    rates
        .iter()
        .map(Rate::to_string)
        .collect::<Vec<_>>()
        .join(";")
}

/// One limit of a kind: at most `concurrency` running at once, and starts
/// within every rate, counted over its scope.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    pub kind: String,
    pub scope: LimitScope,
    pub concurrency: Option<u32>,
    pub rates: Vec<Rate>,
}

impl Limit {
    /// Refuses a limit that allows nothing or says nothing.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.concurrency == Some(0) {
            return Err((
                "concurrency",
                "a concurrency limit must be at least 1".into(),
            ));
        }
        if self.rates.len() > MAX_RATES {
            return Err((
                "rates",
                format!("at most {MAX_RATES} rates can be stacked on one limit"),
            ));
        }
        if self.rates.iter().any(|r| r.count == 0 || r.burst == 0) {
            return Err(("rates", "a rate must be at least 1".into()));
        }
        if self.concurrency.is_none() && self.rates.is_empty() {
            return Err((
                "concurrency",
                "a limit needs a concurrency, a rate, or both".into(),
            ));
        }
        Ok(())
    }
}

/// The most rates stacked on one limit.
pub const MAX_RATES: usize = 8;

/// The limits of one kind, by scope.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KindLimits {
    pub limits: Vec<Limit>,
}

impl KindLimits {
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    pub fn of(&self, scope: LimitScope) -> Option<&Limit> {
        self.limits.iter().find(|l| l.scope == scope)
    }

    /// The concurrency of a scope, if it has one.
    pub fn concurrency(&self, scope: LimitScope) -> Option<u32> {
        self.of(scope).and_then(|l| l.concurrency)
    }

    /// Whether a scope has rates.
    pub fn rated(&self, scope: LimitScope) -> bool {
        self.of(scope).is_some_and(|l| !l.rates.is_empty())
    }
}

/// The slots a running operation holds: one bit per scope whose
/// concurrency counted it when it was claimed. They are given back when it
/// stops running, whatever the limits are by then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Holds(u8);

impl Holds {
    pub const NONE: Holds = Holds(0);

    pub fn from_bits(bits: u8) -> Self {
        Holds(bits & 0b111)
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn has(self, scope: LimitScope) -> bool {
        self.0 & scope.bit() != 0
    }

    fn with(self, scope: LimitScope) -> Self {
        Holds(self.0 | scope.bit())
    }

    /// The scopes held.
    pub fn scopes(self) -> impl Iterator<Item = LimitScope> {
        LimitScope::ALL.into_iter().filter(move |s| self.has(*s))
    }
}

/// The key an operation is counted under in one scope: "" for the whole
/// kind, its concurrency key, or its tenant. None when the scope does not
/// count it (a key limit and an operation without a key).
pub fn slot_key<'a>(scope: LimitScope, tenant: &'a str, key: Option<&'a str>) -> Option<&'a str> {
    match scope {
        LimitScope::Kind => Some(""),
        LimitScope::Key => key,
        LimitScope::Tenant => Some(tenant),
    }
}

/// Why a queued operation has not started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Its kind's queue is paused.
    QueuePaused,
    /// Its kind runs as many as it may (on this node or in the cluster).
    KindConcurrency,
    /// Its concurrency key runs as many as it may.
    KeyConcurrency { key: String },
    /// Its tenant runs as many of the kind as it may.
    TenantConcurrency,
    /// A rate limit is spent; the next start is allowed at `until`.
    RateLimited { until: SystemTime },
    /// It was asked to start later.
    Scheduled { until: SystemTime },
    /// It waits out the backoff before a retry.
    Backoff { until: SystemTime },
}

impl Waiting {
    /// The UPPER_SNAKE word the wire carries.
    pub fn as_str(&self) -> &'static str {
        match self {
            Waiting::QueuePaused => "QUEUE_PAUSED",
            Waiting::KindConcurrency => "KIND_CONCURRENCY",
            Waiting::KeyConcurrency { .. } => "KEY_CONCURRENCY",
            Waiting::TenantConcurrency => "TENANT_CONCURRENCY",
            Waiting::RateLimited { .. } => "RATE_LIMITED",
            Waiting::Scheduled { .. } => "SCHEDULED",
            Waiting::Backoff { .. } => "BACKOFF",
        }
    }

    /// The key it waits on, for a key limit.
    pub fn key(&self) -> Option<&str> {
        match self {
            Waiting::KeyConcurrency { key } => Some(key),
            _ => None,
        }
    }

    /// When the wait ends, when that is known.
    pub fn until(&self) -> Option<SystemTime> {
        match self {
            Waiting::RateLimited { until }
            | Waiting::Scheduled { until }
            | Waiting::Backoff { until } => Some(*until),
            _ => None,
        }
    }
}

/// A token bucket's level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at: SystemTime,
}

impl Bucket {
    /// Its level at `now`, refilled at `rate` since it was last read.
    pub fn level(&self, rate: &Rate, now: SystemTime) -> f64 {
        let gained = now
            .duration_since(self.at)
            .map_or(0.0, |d| d.as_micros() as f64 * rate.per_micro());
        (self.tokens + gained).min(f64::from(rate.burst))
    }

    /// When it next holds a whole token, refilled at `rate`.
    fn next_token(&self, rate: &Rate, now: SystemTime) -> SystemTime {
        let missing = 1.0 - self.level(rate, now);
        if missing <= 0.0 {
            return now;
        }
        now + Duration::from_micros((missing / rate.per_micro()).ceil() as u64)
    }
}

/// Where a slot or bucket is counted: scope and key within one kind.
pub type SlotId = (LimitScope, String);

/// What runs and what the buckets hold, for the slots and buckets of one
/// kind a claim touches. Backends fill it (from memory, or from locked
/// rows) and read back what changed. Kept by scope, then key, so that a
/// lookup by key allocates nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    running: HashMap<LimitScope, HashMap<String, u32>>,
    /// By scope and rate (its index in the limit), then key.
    buckets: HashMap<(LimitScope, usize), HashMap<String, Bucket>>,
}

impl Usage {
    /// How many run holding the slot.
    pub fn running(&self, scope: LimitScope, key: &str) -> u32 {
        self.running
            .get(&scope)
            .and_then(|keys| keys.get(key))
            .copied()
            .unwrap_or(0)
    }

    /// Sets how many run holding the slot.
    pub fn set_running(&mut self, scope: LimitScope, key: &str, n: u32) {
        let keys = self.running.entry(scope).or_default();
        match keys.get_mut(key) {
            Some(count) => *count = n,
            None => {
                keys.insert(key.to_owned(), n);
            }
        }
    }

    /// Adds to (or, below zero, takes from) how many run holding the slot.
    /// A slot that falls to zero is forgotten, so that the slots kept are
    /// as many as run.
    pub fn add_running(&mut self, scope: LimitScope, key: &str, by: i64) {
        let n = i64::from(self.running(scope, key)).saturating_add(by);
        if n <= 0 {
            if let Some(keys) = self.running.get_mut(&scope) {
                keys.remove(key);
            }
            return;
        }
        self.set_running(scope, key, u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// Every slot and how many run holding it.
    pub fn slots(&self) -> impl Iterator<Item = (LimitScope, &str, u32)> {
        self.running
            .iter()
            .flat_map(|(scope, keys)| keys.iter().map(|(key, n)| (*scope, key.as_str(), *n)))
    }

    /// A bucket's level as last stored, if it was.
    pub fn bucket(&self, scope: LimitScope, rate: usize, key: &str) -> Option<Bucket> {
        self.buckets
            .get(&(scope, rate))
            .and_then(|keys| keys.get(key))
            .copied()
    }

    pub fn set_bucket(&mut self, scope: LimitScope, rate: usize, key: &str, bucket: Bucket) {
        let keys = self.buckets.entry((scope, rate)).or_default();
        match keys.get_mut(key) {
            Some(b) => *b = bucket,
            None => {
                keys.insert(key.to_owned(), bucket);
            }
        }
    }

    /// Every bucket: scope, rate, key and level.
    pub fn buckets(&self) -> impl Iterator<Item = (LimitScope, usize, &str, Bucket)> {
        self.buckets.iter().flat_map(|((scope, rate), keys)| {
            keys.iter()
                .map(move |(key, b)| (*scope, *rate, key.as_str(), *b))
        })
    }

    /// Keeps only the slots and buckets `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(LimitScope, &str) -> bool) {
        for (scope, keys) in &mut self.running {
            keys.retain(|key, _| keep(*scope, key));
        }
        for ((scope, _), keys) in &mut self.buckets {
            keys.retain(|key, _| keep(*scope, key));
        }
    }
}

/// Decides, candidate by candidate, which queued operations of one kind
/// may start now under its limits, and counts each one admitted.
pub struct Gate<'a> {
    pub limits: &'a KindLimits,
    pub usage: &'a mut Usage,
}

impl Gate<'_> {
    /// Whether an operation of `tenant` with `key` may start at `now`:
    /// the slots it would hold, or why it waits and the scope of the limit
    /// that holds it back. Changes nothing.
    pub fn check(
        &self,
        tenant: &str,
        key: Option<&str>,
        now: SystemTime,
    ) -> Result<Holds, (LimitScope, Waiting)> {
        let mut holds = Holds::NONE;
        for limit in &self.limits.limits {
            let Some(slot) = slot_key(limit.scope, tenant, key) else {
                continue;
            };
            if let Some(max) = limit.concurrency {
                if self.usage.running(limit.scope, slot) >= max {
                    return Err((
                        limit.scope,
                        match limit.scope {
                            LimitScope::Kind => Waiting::KindConcurrency,
                            LimitScope::Key => Waiting::KeyConcurrency {
                                key: slot.to_owned(),
                            },
                            LimitScope::Tenant => Waiting::TenantConcurrency,
                        },
                    ));
                }
                holds = holds.with(limit.scope);
            }
            let mut until: Option<SystemTime> = None;
            for (i, rate) in limit.rates.iter().enumerate() {
                let bucket = self.bucket(limit.scope, i, slot, rate, now);
                if bucket.level(rate, now) < 1.0 {
                    let next = bucket.next_token(rate, now);
                    until = Some(until.map_or(next, |u| u.max(next)));
                }
            }
            if let Some(until) = until {
                return Err((limit.scope, Waiting::RateLimited { until }));
            }
        }
        Ok(holds)
    }

    /// Like [`check`](Self::check), and when it may start, takes its
    /// slots and a token of every bucket.
    pub fn admit(
        &mut self,
        tenant: &str,
        key: Option<&str>,
        now: SystemTime,
    ) -> Result<Holds, (LimitScope, Waiting)> {
        let holds = self.check(tenant, key, now)?;
        for limit in &self.limits.limits {
            let Some(slot) = slot_key(limit.scope, tenant, key) else {
                continue;
            };
            if holds.has(limit.scope) {
                self.usage.add_running(limit.scope, slot, 1);
            }
            for (i, rate) in limit.rates.iter().enumerate() {
                let level = self
                    .bucket(limit.scope, i, slot, rate, now)
                    .level(rate, now);
                let bucket = Bucket {
                    tokens: level - 1.0,
                    at: now,
                };
                self.usage.set_bucket(limit.scope, i, slot, bucket);
            }
        }
        Ok(holds)
    }

    /// A bucket as stored, or full when it never was.
    fn bucket(
        &self,
        scope: LimitScope,
        i: usize,
        key: &str,
        rate: &Rate,
        now: SystemTime,
    ) -> Bucket {
        self.usage.bucket(scope, i, key).unwrap_or(Bucket {
            tokens: f64::from(rate.burst),
            at: now,
        })
    }
}

/// Gives back what a stopped operation held.
pub fn release(usage: &mut Usage, holds: Holds, tenant: &str, key: Option<&str>) {
    for scope in holds.scopes() {
        if let Some(slot) = slot_key(scope, tenant, key) {
            usage.add_running(scope, slot, -1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(specs: &[(LimitScope, Option<u32>, &str)]) -> KindLimits {
        KindLimits {
            limits: specs
                .iter()
                .map(|(scope, concurrency, rates)| Limit {
                    kind: "k".into(),
                    scope: *scope,
                    concurrency: *concurrency,
                    rates: parse_rates(rates).unwrap(),
                })
                .collect(),
        }
    }

    #[test]
    fn rates_read_and_write_back() {
        let rates = parse_rates("100/s;5000/h:burst=10").unwrap();
        assert_eq!(rates[0].per, Duration::from_secs(1));
        assert_eq!(rates[1].count, 5000);
        assert_eq!(rates[1].burst, 10);
        assert_eq!(format_rates(&rates), "100/s;5000/h:burst=10");
        for bad in ["10/fortnight", "ten/s", "0/s", "5", "5/s:burst=x"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_key_limit_counts_each_key_apart() {
        let limits = limits(&[(LimitScope::Key, Some(2), "")]);
        let mut usage = Usage::default();
        let mut gate = Gate {
            limits: &limits,
            usage: &mut usage,
        };
        let now = SystemTime::UNIX_EPOCH;
        assert!(gate.admit("t", Some("a"), now).is_ok());
        assert!(gate.admit("t", Some("a"), now).is_ok());
        assert_eq!(
            gate.admit("t", Some("a"), now),
            Err((LimitScope::Key, Waiting::KeyConcurrency { key: "a".into() }))
        );
        assert!(gate.admit("t", Some("b"), now).is_ok());
        // Without a key, a key limit does not apply.
        assert_eq!(gate.admit("t", None, now), Ok(Holds::NONE));
        let holds = Holds::NONE.with(LimitScope::Key);
        release(&mut usage, holds, "t", Some("a"));
        let mut gate = Gate {
            limits: &limits,
            usage: &mut usage,
        };
        assert!(gate.admit("t", Some("a"), now).is_ok());
    }

    #[test]
    fn a_spent_bucket_says_when_its_next_token_comes() {
        let limits = limits(&[(LimitScope::Kind, None, "2/s;3/m")]);
        let mut usage = Usage::default();
        let mut gate = Gate {
            limits: &limits,
            usage: &mut usage,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert!(gate.admit("t", None, now).is_ok());
        assert!(gate.admit("t", None, now).is_ok());
        let Err((_, Waiting::RateLimited { until })) = gate.admit("t", None, now) else {
            panic!("the bucket is spent");
        };
        assert_eq!(until, now + Duration::from_millis(500));
        let later = now + Duration::from_millis(500);
        assert!(gate.admit("t", None, later).is_ok());
        // The per-minute bucket is now spent: it gains 0.05 a second.
        let then = later + Duration::from_secs(1);
        let Err((_, Waiting::RateLimited { until })) = gate.admit("t", None, then) else {
            panic!("the minute's bucket is spent");
        };
        let wait = until.duration_since(then).unwrap();
        assert!(wait > Duration::from_millis(18_400) && wait < Duration::from_millis(18_600));
    }

    #[test]
    fn limits_that_allow_nothing_are_refused() {
        let mut limit = Limit {
            kind: "k".into(),
            scope: LimitScope::Tenant,
            concurrency: Some(0),
            rates: vec![],
        };
        assert_eq!(limit.check().unwrap_err().0, "concurrency");
        limit.concurrency = None;
        assert!(limit.check().is_err());
        limit.concurrency = Some(3);
        assert!(limit.check().is_ok());
    }
}
