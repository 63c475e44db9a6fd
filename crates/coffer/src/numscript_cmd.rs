//! `coffer numscript …`: spec tests, diagnostics and one-off runs. All file reading happens
//! here; the `numscript` crate itself does no I/O.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use numscript::specs::{run_spec_file, CaseStatus};
use numscript::{BalanceRow, FeatureFlags, MemoryStore, Program, Severity};
use serde_json::{json, Map, Value as Json};

#[derive(Subcommand)]
pub enum NumscriptCommand {
    /// Run every `*.num` that has a `*.num.specs.json` under the given paths.
    Test {
        /// Spec files (`X.num.specs.json`) or directories searched recursively.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print a script's diagnostics as `FILE:line:col: message`.
    Check { file: PathBuf },
    /// Run a script and print its postings and metadata as JSON.
    Run {
        file: PathBuf,
        /// Variables: `{"name": "value"}`.
        #[arg(long, default_value = "{}")]
        vars: String,
        /// Balances: `{"account": {"ASSET": amount}}`.
        #[arg(long, default_value = "{}")]
        balances: String,
        /// Account metadata: `{"account": {"key": "value"}}`.
        #[arg(long, default_value = "{}")]
        meta: String,
        /// Enable an experimental feature (repeatable).
        #[arg(long = "feature-flag")]
        feature_flags: Vec<String>,
    },
}

pub fn run(command: NumscriptCommand) -> anyhow::Result<ExitCode> {
    match command {
        NumscriptCommand::Test { paths } => test(&paths),
        NumscriptCommand::Check { file } => check(&file),
        NumscriptCommand::Run {
            file,
            vars,
            balances,
            meta,
            feature_flags,
        } => run_script(&file, &vars, &balances, &meta, &feature_flags),
    }
}

const SPECS_SUFFIX: &str = ".num.specs.json";

fn collect_spec_files(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if metadata.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect_spec_files(&entry, out)?;
        } else if entry.to_string_lossy().ends_with(SPECS_SUFFIX) {
            out.push(entry);
        }
    }
    Ok(())
}

fn test(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for path in paths {
        collect_spec_files(path, &mut files)?;
    }
    let (mut passed, mut failed, mut broken_files) = (0usize, 0usize, 0usize);
    let mut focus_or_skip = false;
    if files.is_empty() {
        println!("no `*{SPECS_SUFFIX}` file found");
        broken_files += 1;
    }
    for specs_path in &files {
        let specs_name = specs_path.to_string_lossy();
        let Some(script_name) = specs_name.strip_suffix(".specs.json") else {
            println!("{specs_name}: not a `*{SPECS_SUFFIX}` file");
            broken_files += 1;
            continue;
        };
        let texts = std::fs::read_to_string(script_name)
            .with_context(|| format!("cannot read the script {script_name}"))
            .and_then(|script| {
                let specs = std::fs::read_to_string(specs_path)
                    .with_context(|| format!("cannot read {specs_name}"))?;
                Ok((script, specs))
            });
        let (script, specs) = match texts {
            Ok(texts) => texts,
            Err(error) => {
                println!("{specs_name}: {error:#}");
                broken_files += 1;
                continue;
            }
        };
        let report = run_spec_file(&script, &specs);
        if let Some(error) = &report.error {
            println!("{specs_name}: {error}");
            broken_files += 1;
        }
        focus_or_skip |= report.focus_or_skip;
        for case in &report.cases {
            match case.status {
                CaseStatus::Passed => passed += 1,
                CaseStatus::Skipped => println!("{specs_name}: skipped: {}", case.it),
                CaseStatus::Failed => {
                    failed += 1;
                    for failure in &case.failures {
                        println!(
                            "FAIL {specs_name} `{}`: {}: expected {}, got {}",
                            case.it, failure.assertion, failure.expected, failure.got
                        );
                    }
                }
            }
        }
    }
    if focus_or_skip {
        println!("some cases use `focus` or `skip`: the run does not count as passing");
    }
    if broken_files > 0 {
        println!("{broken_files} spec file(s) could not be run");
    }
    println!("{passed} passed, {failed} failed");
    let green = failed == 0 && broken_files == 0 && !focus_or_skip;
    Ok(if green {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check(file: &Path) -> anyhow::Result<ExitCode> {
    let source =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let diagnostics = numscript::check(&source);
    let mut errors = 0;
    for diagnostic in &diagnostics {
        // Errors print as `FILE:line:col: message`; warnings say so.
        let prefix = match diagnostic.severity {
            Severity::Error => {
                errors += 1;
                ""
            }
            Severity::Warning => "warning: ",
        };
        println!(
            "{}:{}:{}: {prefix}{}",
            file.display(),
            diagnostic.line,
            diagnostic.column,
            diagnostic.message
        );
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn parse_object(text: &str, what: &str) -> anyhow::Result<Map<String, Json>> {
    match serde_json::from_str(text).with_context(|| format!("--{what} is not valid JSON"))? {
        Json::Object(object) => Ok(object),
        _ => bail!("--{what} must be a JSON object"),
    }
}

fn run_script(
    file: &Path,
    vars: &str,
    balances: &str,
    meta: &str,
    feature_flags: &[String],
) -> anyhow::Result<ExitCode> {
    let source =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let program = match Program::parse(&source) {
        Ok(program) => program,
        Err(errors) => {
            for d in &errors.diagnostics {
                eprintln!(
                    "{}:{}:{}: error: {}",
                    file.display(),
                    d.line,
                    d.column,
                    d.message
                );
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut variables = BTreeMap::new();
    for (name, value) in parse_object(vars, "vars")? {
        let value = match value {
            Json::String(s) => s,
            Json::Number(n) => n.to_string(),
            _ => bail!("--vars: `{name}` must be a string"),
        };
        variables.insert(name, value);
    }
    let mut store = MemoryStore::default();
    for (account, assets) in parse_object(balances, "balances")? {
        let Json::Object(assets) = assets else {
            bail!("--balances: `{account}` must map assets to amounts");
        };
        for (asset, amount) in assets {
            let text = match &amount {
                Json::Number(n) => n.to_string(),
                Json::String(s) => s.clone(),
                _ => bail!("--balances: {account} {asset}: the amount must be an integer"),
            };
            let amount: i128 = text.parse().with_context(|| {
                format!("--balances: {account} {asset}: `{text}` is not an i128")
            })?;
            store.balances.push(BalanceRow {
                account: account.clone(),
                asset,
                color: String::new(),
                amount,
            });
        }
    }
    for (account, entries) in parse_object(meta, "meta")? {
        let Json::Object(entries) = entries else {
            bail!("--meta: `{account}` must map keys to values");
        };
        let target = store.metadata.entry(account.clone()).or_default();
        for (key, value) in entries {
            let value = match value {
                Json::String(s) => s,
                other => other.to_string(),
            };
            target.insert(key, value);
        }
    }
    let flags = FeatureFlags::from_names(feature_flags).map_err(|e| anyhow::anyhow!("{e}"))?;
    let execution = match numscript::run(&program, &variables, &flags, &mut store) {
        Ok(execution) => execution,
        Err(error) => {
            eprintln!(
                "{}: runtime error {}: {error}",
                file.display(),
                error.code()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let number =
        |amount: i128| -> Json { Json::Number(amount.to_string().parse().expect("an integer")) };
    let postings: Vec<Json> = execution
        .postings
        .iter()
        .map(|p| {
            json!({
                "source": p.source,
                "destination": p.destination,
                "asset": p.asset,
                "color": p.color,
                "amount": number(p.amount),
            })
        })
        .collect();
    let tx_meta: Map<String, Json> = execution
        .tx_metadata
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let output = json!({
        "postings": postings,
        "txMeta": tx_meta,
        "accountsMeta": execution.account_metadata,
    });
    println!("{output}");
    Ok(ExitCode::SUCCESS)
}
