//! How one setting's value is read out of the TOML file: the value as TOML wrote it is
//! converted inside the deserializer's visitor, so the toml crate attaches the value's own
//! span (the line an error names), and every message starts with the setting's name.
//! Also the two properties every setting's type has (`Slot`): whether the file writes it
//! as a list, and how a value given by the flags stands over one given by the file.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use toml::{Spanned, Value};

use crate::settings::values::{Batch, Readiness, StopTo, Warmup};

/// A value converter: the value as written in TOML in, the setting or a reason out.
pub type Conv<T> = fn(&Value) -> Result<T, String>;

/// The shape of a setting's field: how the file writes it and how sources layer.
pub trait Slot: Sized {
    /// One value as the file writes it (an element, for a list).
    type Item;
    /// Whether the file writes it as a list (`listen = [...]`).
    const LIST: bool;
    /// The field from the values the file gave (exactly one unless `LIST`).
    fn from_items(items: Vec<Self::Item>) -> Self;
    /// `self` (the flags) over `under` (the file): the first source that gives it wins.
    fn over(self, under: Self) -> Self;
}

/// A single value (not a list): its field is an `Option`, `None` meaning not given.
pub trait Scalar {}

impl Scalar for String {}
impl Scalar for PathBuf {}
impl Scalar for u32 {}
impl Scalar for u64 {}
impl Scalar for bool {}
impl Scalar for Duration {}
impl Scalar for Signal {}
impl Scalar for Readiness {}
impl Scalar for StopTo {}
impl Scalar for Warmup {}
impl Scalar for Batch {}

impl<T: Scalar> Slot for Option<T> {
    type Item = T;
    const LIST: bool = false;
    fn from_items(mut items: Vec<T>) -> Self {
        items.pop()
    }
    fn over(self, under: Self) -> Self {
        self.or(under)
    }
}

/// A list the flags may leave out (`args`): `None` when not given.
impl<T> Slot for Option<Vec<T>> {
    type Item = T;
    const LIST: bool = true;
    fn from_items(items: Vec<T>) -> Self {
        Some(items)
    }
    fn over(self, under: Self) -> Self {
        self.or(under)
    }
}

/// A repeatable flag (`--listen`): not given when empty.
impl<T> Slot for Vec<T> {
    type Item = T;
    const LIST: bool = true;
    fn from_items(items: Vec<T>) -> Self {
        items
    }
    fn over(self, under: Self) -> Self {
        if self.is_empty() { under } else { self }
    }
}

/// A switch flag (`--log-prefix`): on if either source turns it on.
impl Slot for bool {
    type Item = bool;
    const LIST: bool = false;
    fn from_items(items: Vec<bool>) -> Self {
        items.into_iter().any(|b| b)
    }
    fn over(self, under: Self) -> Self {
        self || under
    }
}

/// Reads one setting's value into its field: `conv` turns each TOML value (each element
/// of a list) into the setting, with errors that start with the setting's name.
pub struct Read<S: Slot> {
    name: &'static str,
    conv: Conv<S::Item>,
}

impl<S: Slot> Read<S> {
    pub fn new(name: &'static str, conv: Conv<S::Item>) -> Self {
        Read { name, conv }
    }
}

impl<'de, S: Slot> DeserializeSeed<'de> for Read<S> {
    type Value = S;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S, D::Error> {
        let items = d.deserialize_any(Field::new(self.name, self.conv, S::LIST))?;
        Ok(S::from_items(items))
    }
}

/// Visits one field's value (or, with `list`, each element of its array) and converts it
/// inside the visitor, so that the toml deserializer attaches the element's own span.
struct Field<'a, T> {
    name: &'a str,
    conv: Conv<T>,
    list: bool,
}

impl<'a, T> Field<'a, T> {
    fn new(name: &'a str, conv: Conv<T>, list: bool) -> Self {
        Field { name, conv, list }
    }
    fn one<E: serde::de::Error>(self, v: Value) -> Result<Vec<T>, E> {
        if self.list {
            return Err(E::custom(format!(
                "{}: {v} is not a list: write it in brackets, e.g. [{v}]",
                self.name
            )));
        }
        (self.conv)(&v)
            .map(|x| vec![x])
            .map_err(|why| E::custom(format!("{}: {why}", self.name)))
    }
}

impl<'de, T> Visitor<'de> for Field<'_, T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let what = if self.list {
            "a list"
        } else {
            "a string or a number"
        };
        write!(f, "{what} for {}", self.name)
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Vec<T>, E> {
        self.one(Value::String(s.to_owned()))
    }
    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Vec<T>, E> {
        self.one(Value::Integer(n))
    }
    fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<Vec<T>, E> {
        self.one(Value::Float(x))
    }
    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Vec<T>, E> {
        self.one(Value::Boolean(b))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let (name, conv) = (self.name, self.conv);
        if !self.list {
            // `command = ["gunicorn", "app:app"]` is how Dockerfiles write it.
            let hint = match name {
                "command" => ": give the program as a string and its arguments as `args = [...]`",
                _ => "",
            };
            let msg = format!("{name}: a list is not allowed here{hint}");
            return Err(A::Error::custom(msg));
        }
        let mut out = Vec::new();
        while let Some(mut x) = seq.next_element_seed(Field::new(name, conv, false))? {
            out.append(&mut x);
        }
        Ok(out)
    }
}

impl<'de, T> DeserializeSeed<'de> for Field<'_, T> {
    type Value = Vec<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_any(self)
    }
}

/// A table's key, refused unless it is one of `fields` (in the key's own span).
pub struct Key(pub &'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        let key = String::deserialize(d)?;
        match self.0.contains(&key.as_str()) {
            true => Ok(key),
            false => Err(D::Error::unknown_field(&key, self.0)),
        }
    }
}

/// A TOML string.
pub fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(format!("{v} is not a string: put it in double quotes")),
    }
}

/// A path: a TOML string.
pub fn path(v: &Value) -> Result<PathBuf, String> {
    string(v).map(PathBuf::from)
}

/// A value the flags' parser reads too: a string as it is, any other value as TOML
/// writes it (`30` seconds, signal `15`).
pub fn parsed<T>(v: &Value, parse: fn(&str) -> Result<T, String>) -> Result<T, String> {
    match v {
        Value::String(s) => parse(s),
        _ => parse(&v.to_string()),
    }
}

/// A whole number from `lo` to `hi`; `what` says what is allowed.
pub fn number(v: &Value, lo: u32, hi: u32, what: &str) -> Result<u32, String> {
    match v {
        Value::Integer(n) => u32::try_from(*n)
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| format!("{n} is out of range: use {what}")),
        _ => Err(format!("{v} is not a number: use {what}")),
    }
}

/// Checks an environment variable's name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_key(key: &str) -> Result<(), String> {
    let mut bytes = key.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Ok(());
    }
    Err(format!(
        "`{key}` is not a variable name: use letters, digits and _, not starting with a digit"
    ))
}

/// The `[env]` table. The toml deserializer hands keys over sorted, so each key is taken
/// with its span and the pairs are put back in file order.
pub struct EnvTable;

impl<'de> DeserializeSeed<'de> for EnvTable {
    type Value = Vec<(OsString, OsString)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvTable {
    type Value = Vec<(OsString, OsString)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table for env, e.g. [env] RUST_LOG = \"info\"")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key_seed(EnvKey)? {
            let value = map.next_value_seed(EnvValue(key.get_ref()))?;
            out.push((key.span().start, key.into_inner(), value));
        }
        out.sort_by_key(|&(start, _, _)| start);
        Ok(out
            .into_iter()
            .map(|(_, k, v)| (k.into(), v.into()))
            .collect())
    }
}

struct EnvKey;
struct EnvValue<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for EnvKey {
    type Value = Spanned<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let key = Spanned::<String>::deserialize(d)?;
        check_key(key.get_ref()).map_err(|why| D::Error::custom(format!("env: {why}")))?;
        Ok(key)
    }
}

impl<'de> DeserializeSeed<'de> for EnvValue<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        let name = format!("env.{}", self.0);
        let field = Field::new(&name, string, false);
        // A scalar field yields exactly one value.
        Ok(d.deserialize_any(field)?.pop().unwrap_or_default())
    }
}
