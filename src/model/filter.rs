//! The List filter: a small AIP-160 subset.
//!
//! ```text
//! filter     = [ condition { "AND" condition } ]
//! condition  = field op value
//! field      = "done" | "state" | "kind" | "tenant" | "schedule" | "parent"
//!            | "create_time" | "update_time"
//! op         = "=" | "!=" | "<" | "<=" | ">" | ">="
//! value      = bare word | "quoted string"
//! ```
//!
//! `done` takes true or false, `state` a state name such as RUNNING, `kind`
//! and `tenant` a string, `schedule` the name of the schedule that made a
//! run (`schedules/nightly`), `parent` the name of the batch a child
//! belongs to (`operations/...`), and the times an RFC 3339 timestamp. Order
//! comparisons apply to times only.
//!
//! A caller confined to one tenant gets that tenant ANDed to whatever it
//! asked for ([`Filter::restrict_to_tenant`]), so scoping is one more
//! condition, and page tokens (bound to the filter) cannot cross tenants.

use std::fmt;
use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::id::OperationId;
use super::operation::{Operation, State};
use super::tenant::Tenant;

/// A parsed filter; the empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Condition {
    Done {
        equal: bool,
        value: bool,
    },
    State {
        equal: bool,
        value: State,
    },
    Kind {
        equal: bool,
        value: String,
    },
    Tenant {
        equal: bool,
        value: String,
    },
    /// The id of the schedule that made it (without `schedules/`).
    Schedule {
        equal: bool,
        value: String,
    },
    /// The batch it is a child of.
    Parent {
        equal: bool,
        value: OperationId,
    },
    Time {
        field: TimeField,
        op: Op,
        value: SystemTime,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeField {
    Create,
    Update,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    fn holds<T: PartialOrd>(self, left: &T, right: &T) -> bool {
        match self {
            Op::Eq => left == right,
            Op::Ne => left != right,
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
        }
    }
}

/// A filter that does not parse, with a message that says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(String);

const FIELDS: &str = "done, state, kind, tenant, schedule, parent, create_time, update_time";

impl Filter {
    /// Parses a filter expression.
    pub fn parse(input: &str) -> Result<Self, FilterError> {
        let tokens = tokenize(input)?;
        let mut conditions = Vec::new();
        let mut rest = tokens.as_slice();
        while !rest.is_empty() {
            if !conditions.is_empty() {
                match rest {
                    [Token::Word(w), tail @ ..] if w == "AND" => rest = tail,
                    [Token::Word(w), ..] if w.eq_ignore_ascii_case("and") => {
                        return Err(FilterError(format!(
                            "write the conjunction as AND, not {w:?}"
                        )));
                    }
                    [Token::Word(w), ..] if w.eq_ignore_ascii_case("or") => {
                        return Err(FilterError("OR is not supported; only AND".into()));
                    }
                    [t, ..] => {
                        return Err(FilterError(format!(
                            "expected AND between conditions, found {t}"
                        )));
                    }
                    [] => unreachable!("loop condition"),
                }
            }
            let (condition, tail) = parse_condition(rest)?;
            conditions.push(condition);
            rest = tail;
        }
        Ok(Self { conditions })
    }

    /// Narrows the filter to one tenant's operations.
    pub fn restrict_to_tenant(&mut self, tenant: &Tenant) {
        self.conditions.push(Condition::Tenant {
            equal: true,
            value: tenant.as_str().to_owned(),
        });
    }

    /// Narrows the filter to the runs of one schedule (by its id).
    pub fn restrict_to_schedule(&mut self, id: &str) {
        self.conditions.push(Condition::Schedule {
            equal: true,
            value: id.to_owned(),
        });
    }

    /// The batch whose children it asks for (`parent = "operations/..."`),
    /// which a store reads through its index of children.
    pub fn parent(&self) -> Option<OperationId> {
        self.conditions.iter().find_map(|c| match c {
            Condition::Parent { equal: true, value } => Some(*value),
            _ => None,
        })
    }

    /// True when the operation satisfies every condition.
    pub fn matches(&self, op: &Operation) -> bool {
        self.matches_as(op, op.state, op.update_time)
    }

    /// Whether a condition looks at what changes over an operation's life
    /// (its state, whether it is done, when it was updated); a filter that
    /// does not sees each operation match or not for good.
    pub fn follows_changes(&self) -> bool {
        self.conditions.iter().any(|c| match c {
            Condition::Done { .. } | Condition::State { .. } => true,
            Condition::Time { field, .. } => *field == TimeField::Update,
            Condition::Kind { .. }
            | Condition::Tenant { .. }
            | Condition::Schedule { .. }
            | Condition::Parent { .. } => false,
        })
    }

    /// True when the operation, had it been in `state` and last updated at
    /// `update_time` (an earlier version of it, say), satisfies every
    /// condition.
    pub fn matches_as(&self, op: &Operation, state: State, update_time: SystemTime) -> bool {
        self.conditions.iter().all(|c| match c {
            Condition::Done { equal, value } => (state.is_terminal() == *value) == *equal,
            Condition::State { equal, value } => (state == *value) == *equal,
            Condition::Kind { equal, value } => (op.kind == *value) == *equal,
            Condition::Tenant { equal, value } => (op.tenant.as_str() == value) == *equal,
            Condition::Schedule { equal, value } => {
                (op.schedule.as_ref().is_some_and(|s| s.id == *value)) == *equal
            }
            Condition::Parent { equal, value } => (op.parent == Some(*value)) == *equal,
            Condition::Time {
                field,
                op: cmp,
                value,
            } => {
                let time = match field {
                    TimeField::Create => op.create_time,
                    TimeField::Update => update_time,
                };
                cmp.holds(&time, value)
            }
        })
    }
}

impl fmt::Display for Filter {
    /// A canonical spelling: equal filters print the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.conditions.iter().enumerate() {
            if i > 0 {
                f.write_str(" AND ")?;
            }
            let eq = |equal: bool| if equal { "=" } else { "!=" };
            match c {
                Condition::Done { equal, value } => write!(f, "done {} {value}", eq(*equal))?,
                Condition::State { equal, value } => write!(f, "state {} {value}", eq(*equal))?,
                Condition::Kind { equal, value } => write!(f, "kind {} {value:?}", eq(*equal))?,
                Condition::Tenant { equal, value } => write!(f, "tenant {} {value:?}", eq(*equal))?,
                Condition::Schedule { equal, value } => {
                    write!(f, "schedule {} \"schedules/{value}\"", eq(*equal))?
                }
                Condition::Parent { equal, value } => {
                    write!(f, "parent {} \"{}\"", eq(*equal), value.name())?
                }
                Condition::Time { field, op, value } => {
                    let name = match field {
                        TimeField::Create => "create_time",
                        TimeField::Update => "update_time",
                    };
                    let micros = value
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_micros() as i128)
                        .unwrap_or_else(|e| -(e.duration().as_micros() as i128));
                    write!(f, "{name} {} @{micros}", op.as_str())?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Op(Op),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Word(w) => write!(f, "{w:?}"),
            Token::Quoted(q) => write!(f, "the string {q:?}"),
            Token::Op(op) => write!(f, "{:?}", op.as_str()),
        }
    }
}

fn tokenize(input: &str) -> Result<Vec<Token>, FilterError> {
    let mut tokens = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(FilterError(format!(
                                "the string starting at position {pos} is not closed"
                            )));
                        }
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, e @ ('"' | '\\'))) => value.push(e),
                            _ => {
                                return Err(FilterError(format!(
                                    "bad escape in the string starting at position {pos}; only \\\" and \\\\ are allowed"
                                )));
                            }
                        },
                        Some((_, ch)) => value.push(ch),
                    }
                }
                tokens.push(Token::Quoted(value));
            }
            '=' | '!' | '<' | '>' => {
                chars.next();
                let next_is_eq = matches!(chars.peek(), Some((_, '=')));
                let op = match (c, next_is_eq) {
                    ('=', _) => Op::Eq,
                    ('!', true) => Op::Ne,
                    ('<', true) => Op::Le,
                    ('<', false) => Op::Lt,
                    ('>', true) => Op::Ge,
                    ('>', false) => Op::Gt,
                    _ => {
                        return Err(FilterError(format!(
                            "unexpected '!' at position {pos}; did you mean '!='?"
                        )));
                    }
                };
                if next_is_eq && c != '=' {
                    chars.next();
                }
                tokens.push(Token::Op(op));
            }
            '(' | ')' => {
                return Err(FilterError(format!(
                    "parentheses (position {pos}) are not supported; join conditions with AND"
                )));
            }
            _ => {
                let mut word = String::new();
                while let Some(&(_, ch)) = chars.peek() {
                    if ch.is_whitespace() || matches!(ch, '=' | '!' | '<' | '>' | '"' | '(' | ')') {
                        break;
                    }
                    word.push(ch);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

fn parse_condition(tokens: &[Token]) -> Result<(Condition, &[Token]), FilterError> {
    let (field, op, value, rest) = match tokens {
        [
            Token::Word(field),
            Token::Op(op),
            value @ (Token::Word(_) | Token::Quoted(_)),
            rest @ ..,
        ] => (field.as_str(), *op, value, rest),
        [Token::Word(field), Token::Op(_)] => {
            return Err(FilterError(format!(
                "{field:?} has no value to compare with"
            )));
        }
        [Token::Word(field), Token::Op(_), t, ..] => {
            return Err(FilterError(format!(
                "expected a value after {field:?}, found {t}"
            )));
        }
        [Token::Word(field), ..] => {
            return Err(FilterError(format!(
                "expected an operator (=, !=, <, <=, >, >=) after {field:?}"
            )));
        }
        [t, ..] => {
            return Err(FilterError(format!(
                "expected a field name ({FIELDS}), found {t}"
            )));
        }
        [] => return Err(FilterError("the filter ends after AND".into())),
    };
    let text = match value {
        Token::Word(w) | Token::Quoted(w) => w.as_str(),
        Token::Op(_) => unreachable!("matched above"),
    };
    let equality = |field: &str| -> Result<bool, FilterError> {
        match op {
            Op::Eq => Ok(true),
            Op::Ne => Ok(false),
            _ => Err(FilterError(format!(
                "{field} can only be compared with = or !=, not {}",
                op.as_str()
            ))),
        }
    };
    let condition = match field {
        "done" => Condition::Done {
            equal: equality(field)?,
            value: match text {
                "true" => true,
                "false" => false,
                other => {
                    return Err(FilterError(format!(
                        "done takes true or false, not {other:?}"
                    )));
                }
            },
        },
        "state" => Condition::State {
            equal: equality(field)?,
            value: State::from_name(text).ok_or_else(|| {
                FilterError(format!(
                    "unknown state {text:?}; expected one of QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED"
                ))
            })?,
        },
        "kind" => Condition::Kind {
            equal: equality(field)?,
            value: text.to_owned(),
        },
        "tenant" => Condition::Tenant {
            equal: equality(field)?,
            value: text.to_owned(),
        },
        "schedule" => Condition::Schedule {
            equal: equality(field)?,
            value: super::schedule::parse_name(text)
                .map_err(FilterError)?
                .to_owned(),
        },
        "parent" => Condition::Parent {
            equal: equality(field)?,
            value: OperationId::parse_name(text).map_err(|_| {
                FilterError(format!(
                    "parent takes an operation's name, operations/ and its id, not {text:?}"
                ))
            })?,
        },
        "create_time" | "update_time" => Condition::Time {
            field: if field == "create_time" {
                TimeField::Create
            } else {
                TimeField::Update
            },
            op,
            value: parse_time(field, text)?,
        },
        other => {
            return Err(FilterError(format!(
                "unknown field {other:?}; filterable fields are {FIELDS}"
            )));
        }
    };
    Ok((condition, rest))
}

fn parse_time(field: &str, text: &str) -> Result<SystemTime, FilterError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| {
            FilterError(format!(
                "{field} needs an RFC 3339 timestamp such as \"2024-03-01T00:00:00Z\"; {text:?} is not one ({e})"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::payload::Payload;
    use std::time::Duration;

    fn op(state: State, kind: &str, created: SystemTime) -> Operation {
        let mut op = Operation::new(
            kind,
            Payload::default(),
            None,
            [0; 32],
            Default::default(),
            Tenant::default_tenant(),
            created,
        );
        op.state = state;
        op
    }

    #[test]
    fn empty_filter_matches_everything() {
        let f = Filter::parse("  ").unwrap();
        assert!(f.matches(&op(State::Queued, "k", SystemTime::now())));
    }

    #[test]
    fn conditions_are_joined_with_and() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let f = Filter::parse(
            r#"done = false AND state=RUNNING AND kind = "a.b" AND create_time > "2023-11-14T22:13:19Z""#,
        )
        .unwrap();
        assert!(f.matches(&op(State::Running, "a.b", t0)));
        assert!(!f.matches(&op(State::Queued, "a.b", t0)));
        assert!(!f.matches(&op(State::Running, "a.c", t0)));
        assert!(!f.matches(&op(State::Running, "a.b", t0 - Duration::from_secs(2))));
    }

    #[test]
    fn done_matches_terminal_states() {
        let f = Filter::parse("done = true").unwrap();
        assert!(f.matches(&op(State::Cancelled, "k", SystemTime::now())));
        assert!(!f.matches(&op(State::Cancelling, "k", SystemTime::now())));
        let f = Filter::parse("done != true").unwrap();
        assert!(f.matches(&op(State::Cancelling, "k", SystemTime::now())));
    }

    #[test]
    fn offsets_in_timestamps_are_honoured() {
        let a = Filter::parse("create_time >= 2024-01-01T01:00:00+01:00").unwrap();
        let b = Filter::parse("create_time >= \"2024-01-01T00:00:00Z\"").unwrap();
        assert_eq!(a.to_string(), b.to_string());
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        let cases = [
            ("done = maybe", "true or false"),
            ("state = RUNNIN", "unknown state"),
            ("colour = red", "unknown field"),
            ("done = true and state = RUNNING", "AND"),
            ("done = true OR state = RUNNING", "OR"),
            ("done true", "operator"),
            ("done =", "no value"),
            ("state > RUNNING", "= or !="),
            ("create_time > yesterday", "RFC 3339"),
            ("kind = \"open", "not closed"),
            ("(done = true)", "parentheses"),
            ("done = true AND", "ends after AND"),
            ("done ! true", "!="),
            ("= true", "field name"),
        ];
        for (input, needle) in cases {
            let err = Filter::parse(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input:?} gave {err:?}");
        }
    }
}
