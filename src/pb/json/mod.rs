//! Messages in the proto3 JSON mapping, whatever they hold, written
//! straight from their encoded bytes.
//!
//! prost-reflect has the mapping, but it refuses a message holding an
//! `Any` whose type the descriptors do not know (one unknown response
//! would blank a whole page), and it needs the message decoded into a
//! `DynamicMessage` first: a tree of values, a map per message, each
//! `Timestamp`, `Duration` and `Any` encoded and decoded again on the way
//! out. Writing an Operation that way cost more than everything else an
//! HTTP Get does. So the encoded bytes are walked here, with the message's
//! descriptor, and written by the rules prost-reflect follows (its default
//! options: camelCase names, fields at their default left out, 64-bit
//! integers as strings, enums by name, fields in number order), reading
//! the wire as its decoder does: the last of a repeated singular field
//! wins, a message field given twice is the two merged, the last member of
//! a oneof wins, unknown fields are skipped. Each `Any` is unpacked once
//! (as `{"@type": ..., "value": "<base64>"}` when its type is unknown or
//! its bytes are not that type). The rarer well-known types (wrappers,
//! Struct, FieldMask, ...) are still prost-reflect's; the tests hold the
//! two to the same output.

use std::io::Write as _;

use base64::Engine as _;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, OneofDescriptor, Value,
};
use serde_json::Value as Json;

/// The full name of `google.protobuf.Any`.
const ANY: &str = "google.protobuf.Any";

/// How deep messages are written before an Any is left as its bytes: far
/// past any real message, and shallow enough that the JSON stays within
/// what common parsers take (serde_json's own limit is 128 levels).
const MAX_DEPTH: usize = 64;
/// Nesting past which bytes are refused, as prost's decoder refuses them.
const MAX_NESTING: usize = 100;

/// The range of a Timestamp the mapping can write: years 1 to 9999.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
/// The largest Duration the mapping can write: about 10,000 years.
const DURATION_SECONDS: u64 = 315_576_000_000;

/// Bytes that are not the message they were said to be.
struct Malformed;

type Written = Result<(), Malformed>;

/// The message of type `descriptor` encoded in `bytes`, in the proto3 JSON
/// mapping; None when the bytes are not such a message.
pub fn from_bytes(descriptor: &MessageDescriptor, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(256 + bytes.len() * 2);
    write(&mut out, descriptor, bytes, 0).ok()?;
    Some(out)
}

/// The message of type `descriptor` encoded in `bytes`, in the proto3 JSON
/// mapping, as text; None when the bytes are not such a message.
pub fn to_string(descriptor: &MessageDescriptor, bytes: &[u8]) -> Option<String> {
    // Everything here writes UTF-8 only.
    String::from_utf8(from_bytes(descriptor, bytes)?).ok()
}

/// The message of type `descriptor` encoded in `bytes` as a tree of JSON
/// values; None when the bytes are not such a message.
pub fn value(descriptor: &MessageDescriptor, bytes: &[u8]) -> Option<Json> {
    serde_json::from_slice(&from_bytes(descriptor, bytes)?).ok()
}

/// One field as the wire gives it.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// A field's occurrence: its number, where it came on the wire, its value.
type Occurrence<'a> = (u32, usize, Raw<'a>);

/// The fields of an encoded message, in field-number order, each number's
/// occurrences in wire order.
fn occurrences(bytes: &[u8]) -> Result<Vec<Occurrence<'_>>, Malformed> {
    let mut buf = bytes;
    let mut found = Vec::with_capacity(16);
    while !buf.is_empty() {
        let (number, wire) = decode_key(&mut buf).map_err(|_| Malformed)?;
        let raw = match wire {
            WireType::Varint => Raw::Varint(decode_varint(&mut buf).map_err(|_| Malformed)?),
            WireType::SixtyFourBit => Raw::Fixed64(u64::from_le_bytes(take(&mut buf)?)),
            WireType::ThirtyTwoBit => Raw::Fixed32(u32::from_le_bytes(take(&mut buf)?)),
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(|_| Malformed)?;
                let len = usize::try_from(len).map_err(|_| Malformed)?;
                let (value, rest) = buf.split_at_checked(len).ok_or(Malformed)?;
                buf = rest;
                Raw::Bytes(value)
            }
            // Groups are proto2's; no message here has one, so a group is
            // an unknown field, skipped as a decoder skips it.
            WireType::StartGroup => {
                skip_field(wire, number, &mut buf, DecodeContext::default())
                    .map_err(|_| Malformed)?;
                continue;
            }
            WireType::EndGroup => return Err(Malformed),
        };
        found.push((number, found.len(), raw));
    }
    // Stable: each number's occurrences stay in wire order.
    found.sort_by_key(|(number, _, _)| *number);
    Ok(found)
}

/// The next N bytes of `buf`.
fn take<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], Malformed> {
    let (value, rest) = buf.split_first_chunk::<N>().ok_or(Malformed)?;
    *buf = rest;
    Ok(*value)
}

/// Appends the message of type `descriptor` in `bytes`: an object of its
/// set fields, or a well-known type's own form.
fn write(out: &mut Vec<u8>, descriptor: &MessageDescriptor, bytes: &[u8], depth: usize) -> Written {
    let depth = depth + 1;
    if depth > MAX_NESTING {
        return Err(Malformed);
    }
    match descriptor.full_name() {
        ANY => return write_any(out, descriptor, bytes, depth),
        "google.protobuf.Timestamp" => return write_time(out, bytes, true),
        "google.protobuf.Duration" => return write_time(out, bytes, false),
        name if name.starts_with("google.protobuf.") => return delegate(out, descriptor, bytes),
        _ => {}
    }
    let found = occurrences(bytes)?;
    let oneofs = oneof_winners(descriptor, &found);
    out.push(b'{');
    let mut first = true;
    for group in found.chunk_by(|a, b| a.0 == b.0) {
        let Some(field) = descriptor.get_field(group[0].0) else {
            continue; // unknown: skipped, as the mapping wants
        };
        let oneof = match oneofs.is_empty() {
            true => None,
            false => field.containing_oneof(),
        };
        let group = match oneof {
            Some(oneof) => match oneofs.iter().find(|w| w.oneof == oneof) {
                Some(w) if w.number == field.number() => {
                    let from = group.partition_point(|o| o.1 < w.after);
                    &group[from..]
                }
                _ => continue,
            },
            None => group,
        };
        let start = out.len();
        if !first {
            out.push(b',');
        }
        string(out, field.json_name());
        out.push(b':');
        if write_field(out, &field, group, depth)? {
            first = false;
        } else {
            out.truncate(start);
        }
    }
    out.push(b'}');
    Ok(())
}

/// The member of a oneof that the wire leaves set: the last one given, and
/// of it only what came after any other member.
struct OneofWinner {
    oneof: OneofDescriptor,
    number: u32,
    /// The wire position of the last other member (0 when none).
    after: usize,
}

fn oneof_winners(descriptor: &MessageDescriptor, found: &[Occurrence]) -> Vec<OneofWinner> {
    let mut winners: Vec<OneofWinner> = Vec::new();
    if descriptor.oneofs().len() == 0 {
        return winners;
    }
    // The oneof of each occurrence, looked up once.
    let members: Vec<Option<OneofDescriptor>> = found
        .iter()
        .map(|&(number, _, _)| descriptor.get_field(number)?.containing_oneof())
        .collect();
    let mut last: Vec<(OneofDescriptor, u32, usize)> = Vec::new();
    for (&(number, position, _), oneof) in found.iter().zip(&members) {
        let Some(oneof) = oneof else {
            continue;
        };
        match last.iter_mut().find(|(o, _, _)| o == oneof) {
            Some(best) if best.2 < position => *best = (oneof.clone(), number, position),
            Some(_) => {}
            None => last.push((oneof.clone(), number, position)),
        }
    }
    for (oneof, number, _) in last {
        let after = found
            .iter()
            .zip(&members)
            .filter(|(found, member)| found.0 != number && member.as_ref() == Some(&oneof))
            .map(|(found, _)| found.1)
            .max()
            .unwrap_or(0);
        winners.push(OneofWinner {
            oneof,
            number,
            after,
        });
    }
    winners
}

/// Appends the value of `field` from its occurrences; false when there is
/// nothing to write (a field at its default, an empty list).
fn write_field(
    out: &mut Vec<u8>,
    field: &FieldDescriptor,
    group: &[Occurrence],
    depth: usize,
) -> Result<bool, Malformed> {
    let kind = field.kind();
    if field.is_map() {
        return write_map(out, &kind, group, depth);
    }
    if field.is_list() {
        out.push(b'[');
        let mut items = 0;
        for &(_, _, raw) in group {
            match (raw, packed(&kind)) {
                (Raw::Bytes(mut bytes), Some(wire)) => {
                    while !bytes.is_empty() {
                        let raw = match wire {
                            WireType::Varint => {
                                Raw::Varint(decode_varint(&mut bytes).map_err(|_| Malformed)?)
                            }
                            WireType::SixtyFourBit => {
                                Raw::Fixed64(u64::from_le_bytes(take(&mut bytes)?))
                            }
                            _ => Raw::Fixed32(u32::from_le_bytes(take(&mut bytes)?)),
                        };
                        items = comma(out, items);
                        write_single(out, &kind, raw, depth)?;
                    }
                }
                (raw, _) => {
                    items = comma(out, items);
                    write_single(out, &kind, raw, depth)?;
                }
            }
        }
        out.push(b']');
        return Ok(items > 0);
    }
    let mut merged = Vec::new();
    let raw = singular(&kind, group, &mut merged)?;
    if !field.supports_presence() && is_default(&kind, raw)? {
        return Ok(false);
    }
    write_single(out, &kind, raw, depth)?;
    Ok(true)
}

/// Appends a comma before every item but the first; the items so far.
fn comma(out: &mut Vec<u8>, items: usize) -> usize {
    if items > 0 {
        out.push(b',');
    }
    items + 1
}

/// A singular field's value: its last occurrence or, for a message given
/// more than once, all of them merged in `merged` (decoding the bytes one
/// after another is merging them).
fn singular<'a, 'b: 'a>(
    kind: &Kind,
    group: &[Occurrence<'b>],
    merged: &'a mut Vec<u8>,
) -> Result<Raw<'a>, Malformed> {
    let &(_, _, last) = group.last().ok_or(Malformed)?;
    if !matches!(kind, Kind::Message(_)) || group.len() == 1 {
        return Ok(last);
    }
    for &(_, _, raw) in group {
        let Raw::Bytes(bytes) = raw else {
            return Err(Malformed);
        };
        merged.extend_from_slice(bytes);
    }
    Ok(Raw::Bytes(merged))
}

/// How a list of `kind` may come packed, if it may.
fn packed(kind: &Kind) -> Option<WireType> {
    match kind {
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => Some(WireType::SixtyFourBit),
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => Some(WireType::ThirtyTwoBit),
        Kind::Int32
        | Kind::Int64
        | Kind::Uint32
        | Kind::Uint64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Bool
        | Kind::Enum(_) => Some(WireType::Varint),
        Kind::String | Kind::Bytes | Kind::Message(_) => None,
    }
}

/// A field of `kind` at its default, as an absent one reads.
fn zero(kind: &Kind) -> Raw<'static> {
    match packed(kind) {
        Some(WireType::SixtyFourBit) => Raw::Fixed64(0),
        Some(WireType::ThirtyTwoBit) => Raw::Fixed32(0),
        Some(_) => Raw::Varint(0),
        None => Raw::Bytes(&[]),
    }
}

/// Whether `raw` is a scalar's default (which the mapping leaves out).
fn is_default(kind: &Kind, raw: Raw) -> Result<bool, Malformed> {
    Ok(match (kind, raw) {
        (Kind::Message(_), _) => false,
        (Kind::String | Kind::Bytes, Raw::Bytes(bytes)) => bytes.is_empty(),
        _ => match scalar(kind, raw)? {
            Value::Bool(b) => !b,
            Value::I32(n) | Value::EnumNumber(n) => n == 0,
            Value::I64(n) => n == 0,
            Value::U32(n) => n == 0,
            Value::U64(n) => n == 0,
            Value::F32(f) => f == 0.0,
            Value::F64(f) => f == 0.0,
            _ => false,
        },
    })
}

/// A number, boolean or enum number as the wire gives it for `kind`.
fn scalar(kind: &Kind, raw: Raw) -> Result<Value, Malformed> {
    Ok(match (kind, raw) {
        (Kind::Double, Raw::Fixed64(bits)) => Value::F64(f64::from_bits(bits)),
        (Kind::Float, Raw::Fixed32(bits)) => Value::F32(f32::from_bits(bits)),
        (Kind::Int32, Raw::Varint(v)) => Value::I32(v as i32),
        (Kind::Int64, Raw::Varint(v)) => Value::I64(v as i64),
        (Kind::Uint32, Raw::Varint(v)) => Value::U32(v as u32),
        (Kind::Uint64, Raw::Varint(v)) => Value::U64(v),
        (Kind::Sint32, Raw::Varint(v)) => {
            let v = v as u32;
            Value::I32((v >> 1) as i32 ^ -((v & 1) as i32))
        }
        (Kind::Sint64, Raw::Varint(v)) => Value::I64((v >> 1) as i64 ^ -((v & 1) as i64)),
        (Kind::Fixed32, Raw::Fixed32(bits)) => Value::U32(bits),
        (Kind::Fixed64, Raw::Fixed64(bits)) => Value::U64(bits),
        (Kind::Sfixed32, Raw::Fixed32(bits)) => Value::I32(bits as i32),
        (Kind::Sfixed64, Raw::Fixed64(bits)) => Value::I64(bits as i64),
        (Kind::Bool, Raw::Varint(v)) => Value::Bool(v != 0),
        (Kind::Enum(_), Raw::Varint(v)) => Value::EnumNumber(v as i32),
        _ => return Err(Malformed),
    })
}

/// Appends one value of `kind`.
fn write_single(out: &mut Vec<u8>, kind: &Kind, raw: Raw, depth: usize) -> Written {
    match (kind, raw) {
        (Kind::Message(message), Raw::Bytes(bytes)) => return write(out, message, bytes, depth),
        (Kind::String, Raw::Bytes(bytes)) => {
            string(out, std::str::from_utf8(bytes).map_err(|_| Malformed)?);
            return Ok(());
        }
        (Kind::Bytes, Raw::Bytes(bytes)) => {
            write_base64(out, bytes);
            return Ok(());
        }
        _ => {}
    }
    match scalar(kind, raw)? {
        Value::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Value::I32(n) => number(out, &n),
        Value::U32(n) => number(out, &n),
        Value::I64(n) => quoted(out, &n),
        Value::U64(n) => quoted(out, &n),
        Value::F32(f) if f.is_finite() => number(out, &f),
        Value::F64(f) if f.is_finite() => number(out, &f),
        Value::F32(f) => not_finite(out, f64::from(f)),
        Value::F64(f) => not_finite(out, f),
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => {
                out.extend_from_slice(b"null");
            }
            Kind::Enum(e) => match e.get_value(n) {
                Some(known) => string(out, known.name()),
                None => number(out, &n),
            },
            _ => number(out, &n),
        },
        _ => return Err(Malformed),
    }
    Ok(())
}

/// Appends a map field from its entries (messages of a key and a value):
/// the last value of each key, where that key first came.
fn write_map(
    out: &mut Vec<u8>,
    kind: &Kind,
    group: &[Occurrence],
    depth: usize,
) -> Result<bool, Malformed> {
    let Kind::Message(entry) = kind else {
        return Err(Malformed);
    };
    let (keys, values) = (
        entry.map_entry_key_field().kind(),
        entry.map_entry_value_field().kind(),
    );
    // Each key's value occurrences, from its last entry.
    let mut order: Vec<String> = Vec::new();
    let mut last: std::collections::HashMap<String, Vec<Occurrence>> =
        std::collections::HashMap::new();
    for &(_, _, raw) in group {
        let Raw::Bytes(bytes) = raw else {
            return Err(Malformed);
        };
        let found = occurrences(bytes)?;
        let key = found
            .iter()
            .rfind(|o| o.0 == 1)
            .map_or(zero(&keys), |o| o.2);
        let key = match (&keys, key) {
            (Kind::String, Raw::Bytes(text)) => {
                std::str::from_utf8(text).map_err(|_| Malformed)?.to_owned()
            }
            _ => match scalar(&keys, key)? {
                Value::Bool(b) => b.to_string(),
                Value::I32(n) => n.to_string(),
                Value::I64(n) => n.to_string(),
                Value::U32(n) => n.to_string(),
                Value::U64(n) => n.to_string(),
                _ => return Err(Malformed),
            },
        };
        let given = found.into_iter().filter(|o| o.0 == 2).collect();
        if last.insert(key.clone(), given).is_none() {
            order.push(key);
        }
    }
    out.push(b'{');
    let mut items = 0;
    for key in &order {
        items = comma(out, items);
        string(out, key);
        out.push(b':');
        let given = &last[key];
        let mut merged = Vec::new();
        let value = match given.is_empty() {
            true => zero(&values),
            false => singular(&values, given, &mut merged)?,
        };
        write_single(out, &values, value, depth)?;
    }
    out.push(b'}');
    Ok(!order.is_empty())
}

/// Appends a Timestamp (RFC 3339, in UTC) or a Duration (`"1.5s"`);
/// `null` when out of the range the mapping allows.
fn write_time(out: &mut Vec<u8>, bytes: &[u8], timestamp: bool) -> Written {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    for (number, _, raw) in occurrences(bytes)? {
        match (number, raw) {
            (1, Raw::Varint(v)) => seconds = v as i64,
            (2, Raw::Varint(v)) => nanos = v as i32,
            (1 | 2, _) => return Err(Malformed),
            _ => {}
        }
    }
    let written = if timestamp {
        TIMESTAMP_SECONDS.contains(&seconds)
            && (write_timestamp(out, seconds, nanos)
                || write!(out, "\"{}\"", prost_types::Timestamp { seconds, nanos }).is_ok())
    } else {
        seconds.unsigned_abs() <= DURATION_SECONDS
            && nanos.unsigned_abs() < 1_000_000_000
            && write!(out, "\"{}\"", prost_types::Duration { seconds, nanos }).is_ok()
    };
    if !written {
        out.extend_from_slice(b"null");
    }
    Ok(())
}

/// Appends a Timestamp whose nanos are in range as RFC 3339 in UTC, with
/// 0, 3, 6 or 9 digits of fraction as its nanos need (as prost-types'
/// Display writes it, without going through a formatter); false, having
/// written nothing, for nanos out of range.
fn write_timestamp(out: &mut Vec<u8>, seconds: i64, nanos: i32) -> bool {
    let Ok(nanos) = u32::try_from(nanos) else {
        return false;
    };
    if nanos >= 1_000_000_000 {
        return false;
    }
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil(days);
    out.push(b'"');
    for (n, width, then) in [
        (year as u64, 4, b'-'),
        (month, 2, b'-'),
        (day, 2, b'T'),
        ((of_day / 3600) as u64, 2, b':'),
        ((of_day / 60 % 60) as u64, 2, b':'),
    ] {
        digits(out, n, width);
        out.push(then);
    }
    digits(out, (of_day % 60) as u64, 2);
    let fraction = match nanos {
        0 => None,
        n if n % 1_000_000 == 0 => Some((n / 1_000_000, 3)),
        n if n % 1000 == 0 => Some((n / 1000, 6)),
        n => Some((n, 9)),
    };
    if let Some((n, width)) = fraction {
        out.push(b'.');
        digits(out, u64::from(n), width);
    }
    out.extend_from_slice(b"Z\"");
    true
}

/// Appends `n` in `width` decimal digits, zeros in front.
fn digits(out: &mut Vec<u8>, n: u64, width: usize) {
    let start = out.len();
    let mut n = n;
    for _ in 0..width {
        out.push(b'0' + (n % 10) as u8);
        n /= 10;
    }
    out[start..].reverse();
}

/// The proleptic Gregorian (year, month, day) of a count of days since
/// 1970-01-01, for years 1 to 9999: counted in 400-year eras that start on
/// March 1st, so that the leap day ends each year of the era.
fn civil(days: i64) -> (i64, u64, u64) {
    let shifted = days + 719_468; // days from 0000-03-01
    let era = shifted.div_euclid(146_097);
    let of_era = shifted.rem_euclid(146_097); // 0..=146_096
    let year_of_era = (of_era - of_era / 1460 + of_era / 36_524 - of_era / 146_096) / 365;
    let of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * of_year + 2) / 153; // 0 = March
    let day = (of_year - (153 * month_from_march + 2) / 5 + 1) as u64;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u64;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends an Any: its message's fields with `@type`, or `{"@type",
/// "value"}` for a type with a JSON form of its own (a Duration, say), or
/// for a type the descriptors do not know, bytes that are not that type,
/// or one nested too deep (then the value is the bytes, in base64).
fn write_any(out: &mut Vec<u8>, any: &MessageDescriptor, bytes: &[u8], depth: usize) -> Written {
    let (mut type_url, mut value): (&[u8], &[u8]) = (&[], &[]);
    for (number, _, raw) in occurrences(bytes)? {
        match (number, raw) {
            (1, Raw::Bytes(b)) => type_url = b,
            (2, Raw::Bytes(b)) => value = b,
            (1 | 2, _) => return Err(Malformed),
            _ => {}
        }
    }
    let type_url = std::str::from_utf8(type_url).map_err(|_| Malformed)?;
    let name = type_url.rsplit('/').next().unwrap_or_default();
    out.extend_from_slice(b"{\"@type\":");
    string(out, type_url);
    // Each Any's value is read afresh, so the nesting limit does not bound
    // a chain of Anys, each inside the one before (a worker's error
    // details, say): past `MAX_DEPTH` they stay bytes.
    let inner = any
        .parent_pool()
        .get_message_by_name(name)
        .filter(|_| depth <= MAX_DEPTH);
    let start = out.len();
    if let Some(inner) = inner {
        if inner.full_name().starts_with("google.protobuf.") {
            out.extend_from_slice(b",\"value\":");
            if write(out, &inner, value, depth).is_ok() {
                out.push(b'}');
                return Ok(());
            }
        } else if write(out, &inner, value, depth).is_ok() {
            // The message's own fields follow `@type` in the same object.
            if out.len() - start <= 2 {
                out.truncate(start); // `{}`: nothing to add
            } else {
                out[start] = b',';
                out.pop();
            }
            out.push(b'}');
            return Ok(());
        }
        out.truncate(start);
    }
    out.extend_from_slice(b",\"value\":");
    write_base64(out, value);
    out.push(b'}');
    Ok(())
}

/// Appends the well-known type in `bytes` as prost-reflect writes it (only
/// well-known types, which hold no Any, come here).
fn delegate(out: &mut Vec<u8>, descriptor: &MessageDescriptor, bytes: &[u8]) -> Written {
    let message = DynamicMessage::decode(descriptor.clone(), bytes).map_err(|_| Malformed)?;
    let start = out.len();
    if serde_json::to_writer(&mut *out, &message).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
    Ok(())
}

/// Appends a number as JSON writes it.
fn number(out: &mut Vec<u8>, n: &impl serde::Serialize) {
    // Writing a number to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, n);
}

/// Appends a 64-bit integer as a string, as the mapping wants.
fn quoted(out: &mut Vec<u8>, n: &impl serde::Serialize) {
    out.push(b'"');
    number(out, n);
    out.push(b'"');
}

fn not_finite(out: &mut Vec<u8>, f: f64) {
    string(
        out,
        if f.is_nan() {
            "NaN"
        } else if f > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        },
    );
}

/// Appends `bytes` as a JSON string in standard base64 (which needs no
/// escaping).
fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .as_bytes(),
    );
    out.push(b'"');
}

/// Appends `text` as a JSON string.
fn string(out: &mut Vec<u8>, text: &str) {
    // Writing a str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests;
