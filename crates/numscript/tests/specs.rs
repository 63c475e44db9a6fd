//! Spec files in the upstream format: the project's own (`tests/specs/`) and the upstream
//! suite read at run time from `../shared/numscript-specs` beside the repository.

use std::path::{Path, PathBuf};

use numscript::specs::{run_spec_file, CaseStatus};

fn spec_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            spec_files(&entry, out);
        } else if entry.to_string_lossy().ends_with(".num.specs.json") {
            out.push(entry);
        }
    }
}

/// Runs every spec file under `dir` and checks that exactly `expected_cases` cases pass and
/// none fails, listing every failure otherwise.
#[track_caller]
fn check(dir: &Path, expected_cases: usize) {
    let mut files = Vec::new();
    spec_files(dir, &mut files);
    assert!(!files.is_empty(), "no spec file under {}", dir.display());
    let (mut passed, mut problems) = (0, Vec::new());
    for specs_path in &files {
        let specs = std::fs::read_to_string(specs_path).expect("readable specs");
        let script_path = specs_path
            .to_string_lossy()
            .trim_end_matches(".specs.json")
            .to_string();
        let script = std::fs::read_to_string(&script_path).expect("readable script");
        let report = run_spec_file(&script, &specs);
        let name = specs_path.display();
        if let Some(error) = &report.error {
            problems.push(format!("{name}: {error}"));
        }
        if report.focus_or_skip {
            problems.push(format!("{name}: uses focus or skip"));
        }
        for case in &report.cases {
            match case.status {
                CaseStatus::Passed => passed += 1,
                _ => problems.push(format!(
                    "{name} `{}`: {:?} {:?}",
                    case.it, case.status, case.failures
                )),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} passed, failures:\n{}",
        passed,
        problems.join("\n")
    );
    assert_eq!(
        passed,
        expected_cases,
        "number of passing cases under {}",
        dir.display()
    );
}

#[test]
fn project_specs_pass() {
    check(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs"),
        14,
    );
}

#[test]
fn upstream_specs_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/numscript-specs");
    assert!(
        dir.is_dir(),
        "the upstream spec suite is missing: expected it at {} (../shared/numscript-specs beside the repository)",
        dir.display()
    );
    check(&dir, 113);
}
