//! SQL shared by the stores: the schema's names, the filter compiler, and a dialect trait for
//! the few places where SQLite and PostgreSQL differ. Pure string building: no I/O.
//!
//! Placeholders are `$1, $2, …` in order of first use: PostgreSQL reads them natively and
//! SQLite reads `$N` as a named parameter whose index is its rank of appearance.

use crate::error::LedgerError;
use crate::query::{AccountRole, AddressPattern, Condition, Filter, Op, Resource, TimeField};
use crate::time::Timestamp;
use crate::types::{Amount, LedgerId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl SqlValue {
    pub fn amount(amount: Amount) -> SqlValue {
        SqlValue::Text(amount.to_string())
    }
}

/// The parts of SQL that differ between backends.
pub trait Dialect: Send + Sync {
    /// `a - b` on amounts.
    fn sub(&self, a: &str, b: &str) -> String;
    /// `SUM(a)` on amounts, exact.
    fn sum(&self, a: &str) -> String;
    /// `lhs <op> rhs` where rhs is a placeholder bound to an amount's decimal text.
    fn cmp_amount(&self, lhs: &str, op: Op, rhs_param: &str) -> String;
    /// An amount expression as a value the row decoder reads (integer or decimal text).
    fn amount_out(&self, expr: &str) -> String;
    /// A JSON column as text.
    fn json_out(&self, expr: &str) -> String;
    /// Metadata (a JSON object of strings) has `key` equal to `value` (both placeholders).
    fn metadata_eq(&self, column: &str, key_param: &str, value_param: &str) -> String;
    fn metadata_has(&self, column: &str, key_param: &str) -> String;
    /// `column` matches a partial address; `pattern_param` is bound to the pattern's text
    /// (SQLite) or its regular expression (PostgreSQL), as [`Dialect::address_pattern_value`] says.
    fn address_matches(&self, column: &str, pattern_param: &str) -> String;
    fn address_pattern_value(&self, pattern: &AddressPattern) -> String;
    /// The first `segments` segments of an address (all of them if it has fewer).
    fn address_prefix(&self, column: &str, segments: u32) -> String;
    /// Text after a table's name that makes the database walk `index` (empty where the
    /// planner's statistics are trusted to).
    fn index_hint(&self, _index: &str) -> String {
        String::new()
    }
}

/// Fills in the time order (`store::TimeOrder`) of the ledgers an earlier Coffer left without
/// one (`backdated_until` NULL), from their transactions, in both stores' SQL. Run at open, in a
/// write transaction that holds those ledgers' rows (no transaction of theirs may commit
/// meanwhile); the transactions table must hold every transaction of their heads.
pub const TIME_ORDER_BACKFILL: [&str; 2] = [
    "UPDATE ledgers SET latest_timestamp = w.latest, backdated_until = w.until \
     FROM (SELECT ledger_id, MAX(timestamp) AS latest, \
                  COALESCE(MAX(CASE WHEN timestamp < before THEN id END), 0) AS until \
           FROM (SELECT ledger_id, id, timestamp, MAX(timestamp) OVER (PARTITION BY ledger_id \
                        ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before \
                 FROM transactions \
                 WHERE ledger_id IN (SELECT id FROM ledgers WHERE backdated_until IS NULL)) t \
           GROUP BY ledger_id) w \
     WHERE ledgers.id = w.ledger_id AND ledgers.backdated_until IS NULL",
    "UPDATE ledgers SET backdated_until = 0 WHERE backdated_until IS NULL AND next_tx_id = 1",
];

/// Collects parameters while SQL text is built.
#[derive(Default)]
pub struct Params {
    pub values: Vec<SqlValue>,
}

impl Params {
    pub fn push(&mut self, value: SqlValue) -> String {
        self.values.push(value);
        format!("${}", self.values.len())
    }

    pub fn int(&mut self, value: i64) -> String {
        self.push(SqlValue::Int(value))
    }

    pub fn text(&mut self, value: impl Into<String>) -> String {
        self.push(SqlValue::Text(value.into()))
    }
}

/// Context of a filter: the resource's table alias, its ledger and the point in time, if any.
pub struct FilterContext {
    pub resource: Resource,
    pub ledger: LedgerId,
    pub pit: Option<Timestamp>,
}

/// The metadata of the accounts (`a`) or transactions (`t`) of a ledger's query, as it was at
/// `pit` when given: what a target had before its first change dated after `pit`, or its current
/// metadata if none was. Only the targets changed after `pit` look up their history: the query
/// reads those once (through the history's date index) and probes that set for each row, so a
/// read costs about what a current one does plus the changes since `pit`. The ledger and the
/// date are inlined (integers), so that the expression can sit in a select list whatever the
/// order of the placeholders.
pub fn metadata_at(resource: Resource, ledger: LedgerId, pit: Option<Timestamp>) -> String {
    // (row alias, its key column, the history table, the history's column for that key)
    let (alias, key, history, changed) = match resource {
        Resource::Transactions => ("t", "id", "transaction_metadata_changes", "tx_id"),
        _ => ("a", "address", "account_metadata_changes", "address"),
    };
    let column = format!("{alias}.metadata");
    match pit {
        None => column,
        Some(pit) => {
            let pit = pit.micros();
            format!(
                "CASE WHEN {alias}.{key} IN (SELECT h.{changed} FROM {history} h WHERE h.ledger_id = {ledger} \
                 AND h.date > {pit}) THEN COALESCE((SELECT c.before FROM {history} c WHERE c.ledger_id = \
                 {alias}.ledger_id AND c.{changed} = {alias}.{key} AND c.date > {pit} ORDER BY c.date LIMIT 1), \
                 {column}) ELSE {column} END"
            )
        }
    }
}

fn clamp_i64(value: i128) -> i64 {
    value.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

pub fn compile_filter(
    dialect: &dyn Dialect,
    params: &mut Params,
    context: &FilterContext,
    filter: &Filter,
) -> Result<String, LedgerError> {
    Ok(match filter {
        // As in logic: no condition to meet holds, and none of no conditions does not.
        Filter::And(items) if items.is_empty() => "1 = 1".to_string(),
        Filter::Or(items) if items.is_empty() => "1 = 0".to_string(),
        Filter::And(items) | Filter::Or(items) => {
            let joiner = if matches!(filter, Filter::And(_)) {
                " AND "
            } else {
                " OR "
            };
            let parts = items
                .iter()
                .map(|item| {
                    compile_filter(dialect, params, context, item).map(|sql| format!("({sql})"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            parts.join(joiner)
        }
        // `IS NOT TRUE`, not `NOT`: a condition that is NULL (no reference, a metadata key not set)
        // does not match, so its negation must.
        Filter::Not(inner) => format!(
            "({}) IS NOT TRUE",
            compile_filter(dialect, params, context, inner)?
        ),
        Filter::Condition(condition) => compile_condition(dialect, params, context, condition)?,
    })
}

fn address_condition(
    dialect: &dyn Dialect,
    params: &mut Params,
    column: &str,
    pattern: &AddressPattern,
) -> String {
    if let Some(exact) = pattern.exact() {
        return format!("{column} = {}", params.text(exact));
    }
    let mut parts = Vec::new();
    if let Some(prefix) = pattern.literal_prefix() {
        // ';' sorts right after ':', so this range holds every address starting with the prefix.
        let low = params.text(prefix.clone());
        let high = params.text(format!("{prefix};"));
        parts.push(format!("{column} >= {low} AND {column} < {high}"));
    }
    let value = params.text(dialect.address_pattern_value(pattern));
    parts.push(dialect.address_matches(column, &value));
    parts.join(" AND ")
}

fn time_column(resource: Resource, field: TimeField) -> Option<&'static str> {
    use Resource::*;
    Some(match (resource, field) {
        (Transactions, TimeField::Timestamp) => "t.timestamp",
        (Transactions, TimeField::InsertedAt) => "t.inserted_at",
        (Transactions, TimeField::UpdatedAt) => "t.updated_at",
        (Transactions, TimeField::RevertedAt) => "t.reverted_at",
        (Accounts | Volumes, TimeField::FirstUsage) => "a.first_usage",
        (Accounts, TimeField::InsertionDate) => "a.insertion_date",
        (Accounts, TimeField::UpdatedAt) => "a.updated_at",
        (Logs, TimeField::Date) => "l.date",
        (Ledgers, TimeField::AddedAt) => "g.added_at",
        _ => return None,
    })
}

fn in_list(params: &mut Params, column: &str, values: Vec<SqlValue>) -> String {
    if values.is_empty() {
        return "1 = 0".to_string();
    }
    let placeholders: Vec<String> = values.into_iter().map(|v| params.push(v)).collect();
    format!("{column} IN ({})", placeholders.join(", "))
}

fn compile_condition(
    dialect: &dyn Dialect,
    params: &mut Params,
    context: &FilterContext,
    condition: &Condition,
) -> Result<String, LedgerError> {
    use Resource::*;
    let resource = context.resource;
    let unsupported =
        || LedgerError::Validation(format!("query: {condition:?} cannot filter {resource:?}"));
    let alias = match resource {
        Transactions => "t",
        Accounts => "a",
        Logs => "l",
        Volumes => "v",
        Ledgers => "g",
    };
    // Logs carry no metadata: asked only by metadata conditions, which logs never parse to.
    let metadata_column = || match resource {
        Transactions | Accounts | Volumes => Ok(metadata_at(resource, context.ledger, context.pit)),
        Ledgers => Ok("g.metadata".to_string()),
        Logs => Err(unsupported()),
    };
    Ok(match condition {
        Condition::Id(op, value) => match resource {
            Transactions | Logs | Ledgers => {
                format!("{alias}.id {} {}", op.sql(), params.int(clamp_i64(*value)))
            }
            _ => return Err(unsupported()),
        },
        Condition::IdIn(values) => {
            let values = values
                .iter()
                .map(|v| SqlValue::Int(clamp_i64(*v)))
                .collect();
            in_list(params, &format!("{alias}.id"), values)
        }
        Condition::Reference(reference) => {
            format!("t.reference = {}", params.text(reference.clone()))
        }
        Condition::ReferenceIn(references) => in_list(
            params,
            "t.reference",
            references
                .iter()
                .map(|r| SqlValue::Text(r.clone()))
                .collect(),
        ),
        Condition::Time(field, op, timestamp) => {
            let column = time_column(resource, *field).ok_or_else(unsupported)?;
            format!("{column} {} {}", op.sql(), params.int(timestamp.micros()))
        }
        Condition::Reverted(true) => match context.pit {
            // Spelled out so that `$not` of it keeps the transactions never reverted.
            Some(pit) => format!(
                "(t.reverted_at IS NOT NULL AND t.reverted_at <= {})",
                params.int(pit.micros())
            ),
            None => "t.reverted_at IS NOT NULL".to_string(),
        },
        Condition::Reverted(false) => match context.pit {
            Some(pit) => format!(
                "(t.reverted_at IS NULL OR t.reverted_at > {})",
                params.int(pit.micros())
            ),
            None => "t.reverted_at IS NULL".to_string(),
        },
        Condition::Account(role, pattern) => {
            let address = address_condition(dialect, params, "m.address", pattern);
            let role = match role {
                AccountRole::Any => String::new(),
                AccountRole::Source => " AND (m.roles & 1) <> 0".to_string(),
                AccountRole::Destination => " AND (m.roles & 2) <> 0".to_string(),
            };
            format!("t.id IN (SELECT m.tx_id FROM moves m WHERE m.ledger_id = t.ledger_id AND {address}{role})")
        }
        Condition::Address(pattern) => match resource {
            Accounts => address_condition(dialect, params, "a.address", pattern),
            Volumes => address_condition(dialect, params, "v.address", pattern),
            _ => return Err(unsupported()),
        },
        Condition::AddressIn(addresses) => {
            let column = if resource == Volumes {
                "v.address"
            } else {
                "a.address"
            };
            in_list(
                params,
                column,
                addresses
                    .iter()
                    .map(|a| SqlValue::Text(a.clone()))
                    .collect(),
            )
        }
        Condition::Balance { asset, op, amount } => {
            balance_condition(dialect, params, context, asset, *op, *amount)?
        }
        Condition::Asset(asset) => match resource {
            Volumes => format!("v.asset = {}", params.text(asset.clone())),
            _ => return Err(unsupported()),
        },
        Condition::MetadataEq { key, value } => {
            let key = params.text(key.clone());
            let value = params.text(value.clone());
            dialect.metadata_eq(&metadata_column()?, &key, &value)
        }
        Condition::MetadataExists(key) => {
            let key = params.text(key.clone());
            dialect.metadata_has(&metadata_column()?, &key)
        }
        Condition::Name(name) if resource == Ledgers => {
            format!("g.name = {}", params.text(name.clone()))
        }
        Condition::Bucket(bucket) if resource == Ledgers => {
            format!("g.bucket = {}", params.text(bucket.clone()))
        }
        Condition::LogType(kind) if resource == Logs => {
            format!("l.type = {}", params.text(kind.clone()))
        }
        _ => return Err(unsupported()),
    })
}

fn balance_condition(
    dialect: &dyn Dialect,
    params: &mut Params,
    context: &FilterContext,
    asset: &Option<String>,
    op: Op,
    amount: Amount,
) -> Result<String, LedgerError> {
    match context.resource {
        Resource::Accounts => {
            if let Some(pit) = context.pit {
                let asset_sql = match asset {
                    Some(asset) => format!(" AND m.asset = {}", params.text(asset.clone())),
                    None => String::new(),
                };
                let pit = params.int(pit.micros());
                let balance = dialect.sub(
                    &dialect.sum("m.input_delta"),
                    &dialect.sum("m.output_delta"),
                );
                let rhs = params.push(SqlValue::amount(amount));
                Ok(format!(
                    "EXISTS (SELECT 1 FROM moves m WHERE m.ledger_id = a.ledger_id AND m.address = a.address{asset_sql} \
                     AND m.timestamp <= {pit} GROUP BY m.asset HAVING {})",
                    dialect.cmp_amount(&balance, op, &rhs)
                ))
            } else {
                let asset_sql = match asset {
                    Some(asset) => format!(" AND b.asset = {}", params.text(asset.clone())),
                    None => String::new(),
                };
                let rhs = params.push(SqlValue::amount(amount));
                Ok(format!(
                    "EXISTS (SELECT 1 FROM volumes b WHERE b.ledger_id = a.ledger_id AND b.address = a.address{asset_sql} \
                     AND {})",
                    dialect.cmp_amount(&dialect.sub("b.input", "b.output"), op, &rhs)
                ))
            }
        }
        Resource::Volumes => {
            let asset_sql = match asset {
                Some(asset) => format!("v.asset = {} AND ", params.text(asset.clone())),
                None => String::new(),
            };
            let rhs = params.push(SqlValue::amount(amount));
            Ok(format!(
                "{asset_sql}{}",
                dialect.cmp_amount(&dialect.sub("v.input", "v.output"), op, &rhs)
            ))
        }
        _ => Err(LedgerError::Validation(
            "query: balance filters apply to accounts and volumes".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Plain;

    impl Dialect for Plain {
        fn sub(&self, a: &str, b: &str) -> String {
            format!("({a} - {b})")
        }
        fn sum(&self, a: &str) -> String {
            format!("SUM({a})")
        }
        fn cmp_amount(&self, lhs: &str, op: Op, rhs: &str) -> String {
            format!("{lhs} {} {rhs}", op.sql())
        }
        fn amount_out(&self, expr: &str) -> String {
            expr.to_string()
        }
        fn json_out(&self, expr: &str) -> String {
            expr.to_string()
        }
        fn metadata_eq(&self, column: &str, key: &str, value: &str) -> String {
            format!("meta({column}, {key}) = {value}")
        }
        fn metadata_has(&self, column: &str, key: &str) -> String {
            format!("has({column}, {key})")
        }
        fn address_matches(&self, column: &str, pattern: &str) -> String {
            format!("{column} ~ {pattern}")
        }
        fn address_pattern_value(&self, pattern: &AddressPattern) -> String {
            pattern.regex()
        }
        fn address_prefix(&self, column: &str, segments: u32) -> String {
            format!("prefix({column}, {segments})")
        }
    }

    #[track_caller]
    fn check(resource: Resource, filter: &str, expected: &str) {
        check_at(resource, None, filter, expected)
    }

    /// `check` at a point in time.
    #[track_caller]
    fn check_at(resource: Resource, pit: Option<i64>, filter: &str, expected: &str) {
        let filter = Filter::parse_json(resource, filter).unwrap().unwrap();
        let mut params = Params::default();
        let context = FilterContext {
            resource,
            ledger: 7,
            pit: pit.map(Timestamp),
        };
        let sql = compile_filter(&Plain, &mut params, &context, &filter).unwrap();
        let got = format!("{sql} -- {:?}", params.values);
        assert_eq!(got, expected);
    }

    #[test]
    fn compiles() {
        check(
            Resource::Transactions,
            r#"{"$and":[{"$match":{"account":"users::main"}},{"$gte":{"id":3}}]}"#,
            "(t.id IN (SELECT m.tx_id FROM moves m WHERE m.ledger_id = t.ledger_id AND m.address >= $1 AND m.address < $2 AND m.address ~ $3)) AND (t.id >= $4) -- [Text(\"users\"), Text(\"users;\"), Text(\"^users:[^:]+:main$\"), Int(3)]",
        );
        check(
            Resource::Accounts,
            r#"{"$lt":{"balance[USD]":0}}"#,
            "EXISTS (SELECT 1 FROM volumes b WHERE b.ledger_id = a.ledger_id AND b.address = a.address AND b.asset = $1 AND (b.input - b.output) < $2) -- [Text(\"USD\"), Text(\"0\")]",
        );
        check(
            Resource::Accounts,
            r#"{"$not":{"$match":{"metadata[a]":"b"}}}"#,
            "(meta(a.metadata, $1) = $2) IS NOT TRUE -- [Text(\"a\"), Text(\"b\")]",
        );
        check(
            Resource::Transactions,
            r#"{"$in":{"id":[]}}"#,
            "1 = 0 -- []",
        );
        check(Resource::Accounts, r#"{"$or":[]}"#, "1 = 0 -- []");
        // At a point in time, metadata is read from its history.
        check_at(
            Resource::Accounts,
            Some(42),
            r#"{"$match":{"metadata[a]":"b"}}"#,
            "meta(CASE WHEN a.address IN (SELECT h.address FROM account_metadata_changes h WHERE h.ledger_id = 7 AND h.date > 42) THEN COALESCE((SELECT c.before FROM account_metadata_changes c WHERE c.ledger_id = a.ledger_id AND c.address = a.address AND c.date > 42 ORDER BY c.date LIMIT 1), a.metadata) ELSE a.metadata END, $1) = $2 -- [Text(\"a\"), Text(\"b\")]",
        );
        check_at(
            Resource::Transactions,
            Some(42),
            r#"{"$exists":{"metadata":"a"}}"#,
            "has(CASE WHEN t.id IN (SELECT h.tx_id FROM transaction_metadata_changes h WHERE h.ledger_id = 7 AND h.date > 42) THEN COALESCE((SELECT c.before FROM transaction_metadata_changes c WHERE c.ledger_id = t.ledger_id AND c.tx_id = t.id AND c.date > 42 ORDER BY c.date LIMIT 1), t.metadata) ELSE t.metadata END, $1) -- [Text(\"a\")]",
        );
        check(Resource::Accounts, r#"{"$and":[]}"#, "1 = 1 -- []");
        check(
            Resource::Accounts,
            r#"{"$not":{"$or":[]}}"#,
            "(1 = 0) IS NOT TRUE -- []",
        );
        check(Resource::Transactions, r#"{"$match":{"source":"bank"}}"#, "t.id IN (SELECT m.tx_id FROM moves m WHERE m.ledger_id = t.ledger_id AND m.address = $1 AND (m.roles & 1) <> 0) -- [Text(\"bank\")]");
    }
}
