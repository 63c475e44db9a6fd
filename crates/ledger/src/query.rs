//! The v2 filter language (`$match`, `$and`, `$or`, `$not`, `$lt`, `$lte`, `$gt`, `$gte`,
//! `$exists`, `$in`, `$like`), parsed into a typed tree checked against the resource it filters.

use serde_json::Value;

use crate::error::LedgerError;
use crate::time::Timestamp;
use crate::types::{is_valid_asset, Amount};

/// Nesting and size limits keep a hostile filter from costing unbounded work.
pub const FILTER_DEPTH_MAX: usize = 16;
pub const FILTER_NODES_MAX: usize = 256;
pub const FILTER_IN_VALUES_MAX: usize = 1000;
pub const PAGE_SIZE_DEFAULT: u32 = 15;
pub const PAGE_SIZE_MAX: u32 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Transactions,
    Accounts,
    Logs,
    Volumes,
    Ledgers,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Condition(Condition),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl Op {
    pub fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Lt => "<",
            Op::Lte => "<=",
            Op::Gt => ">",
            Op::Gte => ">=",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountRole {
    Any,
    Source,
    Destination,
}

/// A timestamp column that can be compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeField {
    Timestamp,
    InsertedAt,
    UpdatedAt,
    RevertedAt,
    FirstUsage,
    InsertionDate,
    Date,
    AddedAt,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    Id(Op, i128),
    IdIn(Vec<i128>),
    Reference(String),
    ReferenceIn(Vec<String>),
    Time(TimeField, Op, Timestamp),
    Reverted(bool),
    /// Transactions touching an account (as source, destination or either).
    Account(AccountRole, AddressPattern),
    /// Accounts (and volumes rows) by address.
    Address(AddressPattern),
    AddressIn(Vec<String>),
    Balance {
        asset: Option<String>,
        op: Op,
        amount: Amount,
    },
    Asset(String),
    MetadataEq {
        key: String,
        value: String,
    },
    MetadataExists(String),
    Name(String),
    Bucket(String),
    LogType(String),
}

/// An address or a partial address: `users:` (any second segment), `users::main`,
/// `users:...` (any depth). Exact addresses are matched by equality.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressPattern {
    pub text: String,
    /// `None` for a segment that matches anything.
    pub segments: Vec<Option<String>>,
    /// False when the last segment is empty or `...`: deeper addresses match too.
    pub exact_length: bool,
}

impl AddressPattern {
    pub fn parse(text: &str) -> Result<AddressPattern, LedgerError> {
        let parts: Vec<&str> = text.split(':').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        let mut exact_length = true;
        for (index, part) in parts.iter().enumerate() {
            if part.is_empty() || (*part == "..." && index == last) {
                if index == last {
                    exact_length = false;
                }
                segments.push(None);
            } else if part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                segments.push(Some(part.to_string()));
            } else {
                return Err(LedgerError::Validation(format!(
                    "invalid address filter {text:?}"
                )));
            }
        }
        if !exact_length {
            segments.pop();
        }
        Ok(AddressPattern {
            text: text.to_string(),
            segments,
            exact_length,
        })
    }

    /// A pattern with no wildcard matches one address.
    pub fn exact(&self) -> Option<&str> {
        (self.exact_length && self.segments.iter().all(Option::is_some))
            .then_some(self.text.as_str())
    }

    pub fn matches(&self, address: &str) -> bool {
        if let Some(exact) = self.exact() {
            return exact == address;
        }
        let parts: Vec<&str> = address.split(':').collect();
        if self.exact_length && parts.len() != self.segments.len() {
            return false;
        }
        if parts.len() < self.segments.len() {
            return false;
        }
        self.segments
            .iter()
            .zip(&parts)
            .all(|(segment, part)| match segment {
                Some(segment) => segment == part,
                None => true,
            })
    }

    /// POSIX regular expression equivalent to [`AddressPattern::matches`].
    pub fn regex(&self) -> String {
        let mut out = String::from("^");
        for (index, segment) in self.segments.iter().enumerate() {
            if index > 0 {
                out.push(':');
            }
            match segment {
                Some(segment) => out.push_str(segment),
                None => out.push_str("[^:]+"),
            }
        }
        if !self.exact_length {
            out.push_str("(:.*)?");
        }
        out.push('$');
        out
    }

    /// The leading literal segments, usable as an index range prefix.
    pub fn literal_prefix(&self) -> Option<String> {
        let mut prefix = Vec::new();
        for segment in &self.segments {
            match segment {
                Some(segment) => prefix.push(segment.as_str()),
                None => break,
            }
        }
        (!prefix.is_empty()).then(|| prefix.join(":"))
    }
}

impl Filter {
    /// Parses a filter given as JSON text; empty text or `{}` means "no filter".
    pub fn parse_json(resource: Resource, text: &str) -> Result<Option<Filter>, LedgerError> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|err| LedgerError::Validation(format!("query: invalid JSON: {err}")))?;
        Filter::parse(resource, &value)
    }

    pub fn parse(resource: Resource, value: &Value) -> Result<Option<Filter>, LedgerError> {
        match value {
            Value::Null => Ok(None),
            Value::Object(map) if map.is_empty() => Ok(None),
            _ => {
                let mut nodes = 0;
                parse_node(resource, value, 0, &mut nodes).map(Some)
            }
        }
    }

    /// Visits every condition (used to decide query plans).
    pub fn conditions(&self) -> Vec<&Condition> {
        let mut out = Vec::new();
        fn walk<'a>(filter: &'a Filter, out: &mut Vec<&'a Condition>) {
            match filter {
                Filter::And(items) | Filter::Or(items) => {
                    items.iter().for_each(|item| walk(item, out))
                }
                Filter::Not(inner) => walk(inner, out),
                Filter::Condition(condition) => out.push(condition),
            }
        }
        walk(self, &mut out);
        out
    }
}

fn invalid(message: impl Into<String>) -> LedgerError {
    LedgerError::Validation(format!("query: {}", message.into()))
}

fn parse_node(
    resource: Resource,
    value: &Value,
    depth: usize,
    nodes: &mut usize,
) -> Result<Filter, LedgerError> {
    *nodes += 1;
    if depth > FILTER_DEPTH_MAX || *nodes > FILTER_NODES_MAX {
        return Err(invalid(format!(
            "filter too large (at most {FILTER_NODES_MAX} nodes, {FILTER_DEPTH_MAX} levels)"
        )));
    }
    let map = value
        .as_object()
        .ok_or_else(|| invalid("expected an object such as {\"$match\": {…}}"))?;
    if map.len() != 1 {
        return Err(invalid(format!(
            "expected exactly one operator per object, found {}",
            map.len()
        )));
    }
    let (operator, argument) = map.iter().next().expect("one entry");
    match operator.as_str() {
        "$and" | "$or" => {
            let items = argument
                .as_array()
                .ok_or_else(|| invalid(format!("{operator} expects an array")))?
                .iter()
                .map(|item| parse_node(resource, item, depth + 1, nodes))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if operator == "$and" {
                Filter::And(items)
            } else {
                Filter::Or(items)
            })
        }
        "$not" => Ok(Filter::Not(Box::new(parse_node(
            resource,
            argument,
            depth + 1,
            nodes,
        )?))),
        "$match" | "$lt" | "$lte" | "$gt" | "$gte" | "$exists" | "$in" | "$like" => {
            let inner = argument
                .as_object()
                .filter(|inner| inner.len() == 1)
                .ok_or_else(|| {
                    invalid(format!(
                        "{operator} expects an object with exactly one field"
                    ))
                })?;
            let (field, operand) = inner.iter().next().expect("one entry");
            parse_condition(resource, operator, field, operand).map(Filter::Condition)
        }
        other => Err(invalid(format!("unknown operator {other:?}"))),
    }
}

fn comparison(operator: &str) -> Option<Op> {
    Some(match operator {
        "$match" => Op::Eq,
        "$lt" => Op::Lt,
        "$lte" => Op::Lte,
        "$gt" => Op::Gt,
        "$gte" => Op::Gte,
        _ => return None,
    })
}

fn as_string<'a>(field: &str, operand: &'a Value) -> Result<&'a str, LedgerError> {
    operand
        .as_str()
        .ok_or_else(|| invalid(format!("{field}: expected a string")))
}

fn as_integer(field: &str, operand: &Value) -> Result<i128, LedgerError> {
    let text = match operand {
        Value::Number(number) => number.to_string(),
        Value::String(text) => text.clone(),
        _ => return Err(invalid(format!("{field}: expected an integer"))),
    };
    text.parse::<i128>()
        .map_err(|_| invalid(format!("{field}: expected an integer, got {text}")))
}

fn as_timestamp(field: &str, operand: &Value) -> Result<Timestamp, LedgerError> {
    let text = as_string(field, operand)?;
    Timestamp::parse(text)
        .ok_or_else(|| invalid(format!("{field}: expected an RFC 3339 date, got {text:?}")))
}

fn as_list<'a>(field: &str, operand: &'a Value) -> Result<&'a Vec<Value>, LedgerError> {
    let list = operand
        .as_array()
        .ok_or_else(|| invalid(format!("{field}: $in expects an array")))?;
    if list.len() > FILTER_IN_VALUES_MAX {
        return Err(invalid(format!(
            "{field}: $in accepts at most {FILTER_IN_VALUES_MAX} values"
        )));
    }
    Ok(list)
}

fn bracket<'a>(field: &'a str, name: &str) -> Option<&'a str> {
    field
        .strip_prefix(name)?
        .strip_prefix('[')?
        .strip_suffix(']')
}

fn time_field(resource: Resource, field: &str) -> Option<TimeField> {
    use Resource::*;
    Some(match (resource, field) {
        (Transactions, "timestamp") => TimeField::Timestamp,
        (Transactions, "inserted_at" | "insertedAt") => TimeField::InsertedAt,
        (Transactions | Accounts, "updated_at" | "updatedAt") => TimeField::UpdatedAt,
        (Transactions, "reverted_at" | "revertedAt") => TimeField::RevertedAt,
        (Accounts | Volumes, "first_usage" | "firstUsage") => TimeField::FirstUsage,
        (Accounts, "insertion_date" | "insertionDate") => TimeField::InsertionDate,
        (Logs, "date") => TimeField::Date,
        (Ledgers, "added_at" | "addedAt") => TimeField::AddedAt,
        _ => return None,
    })
}

fn parse_condition(
    resource: Resource,
    operator: &str,
    field: &str,
    operand: &Value,
) -> Result<Condition, LedgerError> {
    use Resource::*;
    let unsupported = || {
        invalid(format!(
            "operator {operator} is not supported on field {field:?} of {resource:?}"
        ))
    };
    let op = comparison(operator);

    if let Some(time) = time_field(resource, field) {
        let op = op.ok_or_else(unsupported)?;
        return Ok(Condition::Time(time, op, as_timestamp(field, operand)?));
    }
    if let Some(key) = bracket(field, "metadata") {
        if resource == Logs || operator != "$match" {
            return Err(unsupported());
        }
        let value = match operand {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            _ => return Err(invalid(format!("{field}: expected a string"))),
        };
        return Ok(Condition::MetadataEq {
            key: key.to_string(),
            value,
        });
    }
    if field == "metadata" {
        if operator != "$exists" || resource == Logs {
            return Err(unsupported());
        }
        return Ok(Condition::MetadataExists(
            as_string(field, operand)?.to_string(),
        ));
    }
    if matches!(resource, Accounts | Volumes)
        && (field == "balance" || bracket(field, "balance").is_some())
    {
        let asset = bracket(field, "balance").map(str::to_string);
        if let Some(asset) = &asset {
            if !is_valid_asset(asset) {
                return Err(invalid(format!("{field}: invalid asset")));
            }
        }
        let op = op.ok_or_else(unsupported)?;
        return Ok(Condition::Balance {
            asset,
            op,
            amount: as_integer(field, operand)?,
        });
    }
    match (resource, field) {
        (Transactions | Logs | Ledgers, "id") => match operator {
            "$in" => {
                let ids = as_list(field, operand)?
                    .iter()
                    .map(|v| as_integer(field, v))
                    .collect::<Result<_, _>>()?;
                Ok(Condition::IdIn(ids))
            }
            _ => Ok(Condition::Id(
                op.ok_or_else(unsupported)?,
                as_integer(field, operand)?,
            )),
        },
        (Transactions, "reference") => match operator {
            "$match" => Ok(Condition::Reference(as_string(field, operand)?.to_string())),
            "$in" => {
                let refs = as_list(field, operand)?
                    .iter()
                    .map(|v| as_string(field, v).map(str::to_string))
                    .collect::<Result<_, _>>()?;
                Ok(Condition::ReferenceIn(refs))
            }
            _ => Err(unsupported()),
        },
        (Transactions, "reverted") => match (operator, operand) {
            ("$match", Value::Bool(flag)) => Ok(Condition::Reverted(*flag)),
            ("$match", Value::String(text)) if text == "true" || text == "false" => {
                Ok(Condition::Reverted(text == "true"))
            }
            _ => Err(unsupported()),
        },
        (Transactions, "account" | "source" | "destination") => {
            if operator != "$match" {
                return Err(unsupported());
            }
            let role = match field {
                "source" => AccountRole::Source,
                "destination" => AccountRole::Destination,
                _ => AccountRole::Any,
            };
            Ok(Condition::Account(
                role,
                AddressPattern::parse(as_string(field, operand)?)?,
            ))
        }
        (Accounts | Volumes, "address" | "account") => match operator {
            "$match" => Ok(Condition::Address(AddressPattern::parse(as_string(
                field, operand,
            )?)?)),
            "$in" => {
                let addresses = as_list(field, operand)?
                    .iter()
                    .map(|v| as_string(field, v).map(str::to_string))
                    .collect::<Result<_, _>>()?;
                Ok(Condition::AddressIn(addresses))
            }
            _ => Err(unsupported()),
        },
        (Volumes, "asset") if operator == "$match" => {
            Ok(Condition::Asset(as_string(field, operand)?.to_string()))
        }
        (Ledgers, "name") if operator == "$match" => {
            Ok(Condition::Name(as_string(field, operand)?.to_string()))
        }
        (Ledgers, "bucket") if operator == "$match" => {
            Ok(Condition::Bucket(as_string(field, operand)?.to_string()))
        }
        (Logs, "type") if operator == "$match" => {
            Ok(Condition::LogType(as_string(field, operand)?.to_string()))
        }
        _ => Err(invalid(format!(
            "unknown filter field {field:?} for {resource:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(resource: Resource, input: &str, expected: &str) {
        let got = match Filter::parse_json(resource, input) {
            Ok(filter) => format!("{filter:?}"),
            Err(err) => format!("error: {err}"),
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn filters() {
        use Resource::*;
        check(Transactions, "", "None");
        check(Transactions, "{}", "None");
        check(
            Transactions,
            r#"{"$match":{"metadata[wallets/id]":"x"}}"#,
            r#"Some(Condition(MetadataEq { key: "wallets/id", value: "x" }))"#,
        );
        check(
            Accounts,
            r#"{"$and":[{"$gte":{"balance[USD/2]":100}},{"$not":{"$exists":{"metadata":"k"}}}]}"#,
            r#"Some(And([Condition(Balance { asset: Some("USD/2"), op: Gte, amount: 100 }), Not(Condition(MetadataExists("k")))]))"#,
        );
        check(
            Transactions,
            r#"{"$in":{"id":[1,2]}}"#,
            "Some(Condition(IdIn([1, 2])))",
        );
        check(
            Transactions,
            r#"{"$lt":{"reference":"a"}}"#,
            "error: query: operator $lt is not supported on field \"reference\" of Transactions",
        );
        check(
            Accounts,
            r#"{"$match":{"nope":"a"}}"#,
            "error: query: unknown filter field \"nope\" for Accounts",
        );
        check(
            Accounts,
            r#"{"$match":{"address":"a","b":"c"}}"#,
            "error: query: $match expects an object with exactly one field",
        );
        check(
            Accounts,
            r#"[1]"#,
            "error: query: expected an object such as {\"$match\": {…}}",
        );
        check(
            Transactions,
            r#"{"$gt":{"timestamp":"nope"}}"#,
            "error: query: timestamp: expected an RFC 3339 date, got \"nope\"",
        );
        check(
            Accounts,
            r#"{"$xor":[]}"#,
            "error: query: unknown operator \"$xor\"",
        );
    }

    #[test]
    fn too_deep() {
        let mut text = String::from(r#"{"$match":{"address":"a"}}"#);
        for _ in 0..20 {
            text = format!(r#"{{"$not":{text}}}"#);
        }
        assert!(Filter::parse_json(Resource::Accounts, &text).is_err());
    }

    #[track_caller]
    fn check_pattern(pattern: &str, address: &str, expected: bool) {
        let parsed = AddressPattern::parse(pattern).unwrap();
        assert_eq!(parsed.matches(address), expected, "{pattern} vs {address}");
    }

    #[test]
    fn address_patterns() {
        check_pattern("users:1", "users:1", true);
        check_pattern("users:1", "users:12", false);
        check_pattern("users:", "users:1", true);
        check_pattern("users:", "users:1:main", true);
        check_pattern("users:", "bank:1", false);
        check_pattern("users::main", "users:1:main", true);
        check_pattern("users::main", "users:1:main:x", false);
        check_pattern("users::main", "users:1:other", false);
        check_pattern(":main", "a:main", true);
        check_pattern(":main", "main", false);
        check_pattern("users:...", "users:a:b:c", true);
        assert_eq!(
            AddressPattern::parse("users::main").unwrap().regex(),
            "^users:[^:]+:main$"
        );
        assert_eq!(
            AddressPattern::parse("users:").unwrap().regex(),
            "^users(:.*)?$"
        );
        assert_eq!(
            AddressPattern::parse("users::main")
                .unwrap()
                .literal_prefix()
                .as_deref(),
            Some("users")
        );
        assert!(AddressPattern::parse("us ers").is_err());
    }
}
