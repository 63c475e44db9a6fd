//! The Numscript the wallets run (`wallets:pkg/numscript/*.num`). Accounts and amounts are
//! passed as variables, never spliced into the text, so no input can change a script.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use coffer_ledger::Amount;

use crate::model::Monetary;

pub struct Script {
    pub plain: String,
    pub vars: BTreeMap<String, String>,
}

fn monetary(asset: &str, amount: Amount) -> String {
    format!("{asset} {amount}")
}

/// `send $amount` from the sources in order (each drained before the next) to `destination`.
/// Credits and debits share this shape.
pub fn transfer(amount: &Monetary, sources: &[String], destination: &str) -> Script {
    assert!(!sources.is_empty(), "a transfer needs at least one source");
    assert!(
        amount.amount >= 0,
        "amounts are validated before scripts are built"
    );
    let mut vars = BTreeMap::new();
    let mut plain = String::from("vars {\n  monetary $amount\n  account $destination\n");
    let mut block = String::new();
    for (index, source) in sources.iter().enumerate() {
        writeln!(plain, "  account $source_{index}").expect("write to string");
        write!(block, " $source_{index}").expect("write to string");
        vars.insert(format!("source_{index}"), source.clone());
    }
    plain.push_str("}\n");
    writeln!(
        plain,
        "send $amount (\n  source = {{{block} }}\n  destination = $destination\n)"
    )
    .expect("write to string");
    vars.insert("amount".into(), monetary(&amount.asset, amount.amount));
    vars.insert("destination".into(), destination.to_string());
    Script { plain, vars }
}

/// Pays `amount` (everything held when `None`) from the hold to its destination; with
/// `rest_to`, whatever is left then goes there (a final confirmation).
pub fn confirm_hold(
    hold: &str,
    asset: &str,
    amount: Option<Amount>,
    destination: &str,
    rest_to: Option<&str>,
) -> Script {
    let mut vars = BTreeMap::new();
    let mut plain = String::from("vars {\n  account $hold\n  asset $asset\n  account $dest\n");
    vars.insert("hold".to_string(), hold.to_string());
    vars.insert("asset".to_string(), asset.to_string());
    vars.insert("dest".to_string(), destination.to_string());
    if let Some(amount) = amount {
        assert!(amount > 0, "a zero amount means everything");
        plain.push_str("  monetary $amount\n");
        vars.insert("amount".to_string(), monetary(asset, amount));
    }
    if let Some(rest_to) = rest_to {
        plain.push_str("  account $void_destination\n");
        vars.insert("void_destination".to_string(), rest_to.to_string());
    }
    plain.push_str("}\n");
    let sent = if amount.is_some() {
        "$amount"
    } else {
        "[$asset *]"
    };
    writeln!(
        plain,
        "send {sent} (\n  source = $hold\n  destination = $dest\n)"
    )
    .expect("write to string");
    if rest_to.is_some() {
        plain.push_str(
            "send [$asset *] (\n  source = $hold\n  destination = $void_destination\n)\n",
        );
    }
    Script { plain, vars }
}

/// Returns what the hold still has to the sources of the original debit, each capped at what
/// it gave, in posting order; anything beyond stays in the hold.
pub fn void_hold(hold: &str, asset: &str, returns: &[(String, Amount)]) -> Script {
    assert!(
        !returns.is_empty(),
        "a hold is funded by at least one posting"
    );
    let mut vars = BTreeMap::new();
    let mut plain = String::from("vars {\n  account $hold\n  asset $asset\n");
    let mut block = String::new();
    for (index, (source, amount)) in returns.iter().enumerate() {
        assert!(*amount >= 0, "postings are never negative");
        writeln!(plain, "  account $source_{index}\n  monetary $cap_{index}").expect("write");
        writeln!(block, "    max $cap_{index} to $source_{index}").expect("write");
        vars.insert(format!("source_{index}"), source.clone());
        vars.insert(format!("cap_{index}"), monetary(asset, *amount));
    }
    plain.push_str("}\n");
    write!(
        plain,
        "send [$asset *] (\n  source = $hold\n  destination = {{\n{block}    remaining kept\n  \
         }}\n)\n"
    )
    .expect("write to string");
    vars.insert("hold".to_string(), hold.to_string());
    vars.insert("asset".to_string(), asset.to_string());
    Script { plain, vars }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(script: Script, expected_plain: &str, expected_vars: &[(&str, &str)]) {
        assert_eq!(script.plain, expected_plain);
        let vars: Vec<(&str, &str)> = script
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(vars, expected_vars);
    }

    #[test]
    fn transfer_in_order() {
        let amount = Monetary {
            asset: "USD/2".into(),
            amount: 100,
        };
        check(
            transfer(&amount, &["a:1".into(), "world".into()], "b"),
            "vars {\n  monetary $amount\n  account $destination\n  account $source_0\n  \
             account $source_1\n}\nsend $amount (\n  source = { $source_0 $source_1 }\n  \
             destination = $destination\n)\n",
            &[
                ("amount", "USD/2 100"),
                ("destination", "b"),
                ("source_0", "a:1"),
                ("source_1", "world"),
            ],
        );
    }

    #[test]
    fn confirm_final_with_amount() {
        check(
            confirm_hold(
                "wallets:holds:1",
                "USD",
                Some(5),
                "world",
                Some("wallets:w:main"),
            ),
            "vars {\n  account $hold\n  asset $asset\n  account $dest\n  monetary $amount\n  \
             account $void_destination\n}\nsend $amount (\n  source = $hold\n  destination = \
             $dest\n)\nsend [$asset *] (\n  source = $hold\n  destination = $void_destination\n)\n",
            &[
                ("amount", "USD 5"),
                ("asset", "USD"),
                ("dest", "world"),
                ("hold", "wallets:holds:1"),
                ("void_destination", "wallets:w:main"),
            ],
        );
    }

    #[test]
    fn void_returns_capped() {
        check(
            void_hold(
                "wallets:holds:1",
                "USD",
                &[("a".into(), 3), ("b".into(), 4)],
            ),
            "vars {\n  account $hold\n  asset $asset\n  account $source_0\n  monetary $cap_0\n  \
             account $source_1\n  monetary $cap_1\n}\nsend [$asset *] (\n  source = $hold\n  \
             destination = {\n    max $cap_0 to $source_0\n    max $cap_1 to $source_1\n    \
             remaining kept\n  }\n)\n",
            &[
                ("asset", "USD"),
                ("cap_0", "USD 3"),
                ("cap_1", "USD 4"),
                ("hold", "wallets:holds:1"),
                ("source_0", "a"),
                ("source_1", "b"),
            ],
        );
    }
}
