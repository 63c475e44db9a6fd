//! Diagnostics for malformed scripts, as insta snapshots (`tests/snapshots/`). Every parse error
//! carries a line:column and a readable message, and one script reports all of its errors.
//! Refresh with `INSTA_UPDATE=always cargo test -p numscript --test diagnostics` and review.

/// Snapshots the script followed by its diagnostics, one per line.
#[track_caller]
fn check(name: &str, source: &str) {
    let diagnostics = numscript::check(source);
    let mut out = String::new();
    out.push_str(source.trim_end());
    out.push_str("\n---\n");
    for d in &diagnostics {
        out.push_str(&format!(
            "{}:{}-{}:{}: {:?}: {}\n",
            d.line, d.column, d.end_line, d.end_column, d.severity, d.message
        ));
    }
    if diagnostics.is_empty() {
        out.push_str("(no diagnostics)\n");
    }
    insta::assert_snapshot!(name, out);
}

#[test]
fn several_errors_in_one_script() {
    check(
        "several_errors",
        r#"vars {
  monetary $amt
  account $a =
  number $n
}
send [USD/2 100] (
  source = { @a @b
  destination = @c
)
send $amt (
  source = @world
  destination = { 50% to @x 50% }
)
set_tx_meta("k", 1 +)
send [USD/2 10] ( source = @a destination = @b )
"#,
    );
}

#[test]
fn lexical_errors() {
    check(
        "lexical_errors",
        r#"send [COIN 1__0] (source = @ destination = @b)
set_tx_meta("unterminated, 1)
set_tx_meta("k", $)
send [COIN 1] (source = @a: destination = @b) ~
/* never closed"#,
    );
}

#[test]
fn statement_level_errors() {
    check(
        "statement_errors",
        r#"send [COIN *] (source = @a destination = [COIN *])
save [COIN 1] to @a
oops
send [COIN 1] (source = @a destination = { })
send [COIN 1] (source = @a destination = { max [COIN 1] to @b })
send [COIN 1] (source = oneof { } destination = @b)
send [COIN 1] (destination = @b source = @a)
"#,
    );
}

#[test]
fn malformed_vars_and_features() {
    check(
        "vars_and_features",
        r#"#![feature("experimental-oneof" "x")]
vars {
  monetary
  account $ok
  $missing_type
  number $n = 
}
send [COIN 1] (source = $ok destination = @b)
vars { number $late }
"#,
    );
}

#[test]
fn limits() {
    let deep = format!(
        "send [COIN 1] (source = {}@a{} destination = @b)",
        "{ ".repeat(70),
        " }".repeat(70)
    );
    check("nesting_too_deep", &deep);
    check(
        "number_out_of_range",
        "send [COIN 170141183460469231731687303715884105728] (source = @world destination = @b)",
    );
}

#[test]
fn static_checks() {
    check(
        "static_checks",
        r#"#![feature("experimental-nope")]
vars {
  monetary $m
  monetary $m
  money $x
  number $n = balance(@a)
}
send $undeclared (source = @user:$also_undeclared destination = @b)
set_tx_meta("k", meta(@a, "k"))
frobnicate(1)
balance(@a, COIN)
send [COIN 1] (source = @world destination = { remaining to @a remaining kept })
"#,
    );
}

#[test]
fn valid_script_has_no_diagnostics() {
    check(
        "valid",
        r#"vars { monetary $amount account $wallet }
send $amount (
  source = { $wallet @credit allowing overdraft up to [EUR/2 100] }
  destination = { 10% to @fees remaining to @merchant }
)
"#,
    );
}

#[test]
fn deep_nesting_of_any_kind_is_refused_not_a_stack_overflow() {
    // On a small stack, as a server's worker thread has: without a bound on each nesting path,
    // this aborts the process (a stack overflow cannot be caught).
    let depth = 50_000;
    let nests = [
        ("[", "USD 1", "]"),
        ("(", "[USD 1]", ")"),
        ("-", "[USD 1]", ""),
        ("[(", "USD 1", ")]"),
    ];
    for (open, inner, close) in nests {
        let source = format!(
            "send {}{inner}{} (source = @world destination = @a)",
            open.repeat(depth),
            close.repeat(depth)
        );
        let diagnostics = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || numscript::check(&source))
            .unwrap()
            .join()
            .unwrap();
        assert!(
            diagnostics
                .iter()
                .any(|d| d.message.contains("nesting too deep")),
            "{open}: {:?}",
            diagnostics.first()
        );
    }
}
