//! Functions are built to unwind on panic, checked on the build configuration itself.
//!
//! `lambda_runtime` catches a handler's panic and reports it on the invocation's `/error`, so
//! one bad request or item fails that invocation only (`runtime.rs` shows it on the fixture).
//! Built with `panic = "abort"`, the process dies instead: the environment is lost, and an SQS
//! batch comes back whole after its visibility timeout. Release builds cannot be run here (about
//! 6 minutes on 2 cores), so this reads what decides the strategy:
//!
//! - `[profile.release]` in the workspace Cargo.toml must say `panic = "unwind"` out loud:
//!   `cargo lambda build --release` (what `sam build` runs for `rust-cargolambda`) adds
//!   `--config profile.release.panic="abort"` whenever the release profile names no strategy;
//! - nothing else that feeds a build (member manifests, `.cargo/config*`, the Makefile,
//!   samconfig.toml, template.yaml) asks for abort (`panic = "abort"`, `-C panic=abort`,
//!   `CARGO_PROFILE_<NAME>_PANIC=abort`).

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `key = value` lines of each `[section]` of a TOML file, comments dropped, with the spaces
/// and quotes removed so that spellings compare equal.
fn sections(text: &str) -> Vec<(String, Vec<String>)> {
    let mut sections = vec![(String::new(), Vec::new())];
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            sections.push((line.trim_matches(['[', ']']).trim().to_string(), Vec::new()));
        } else if !line.is_empty() {
            let entry = squeeze(line);
            sections.last_mut().expect("one section").1.push(entry);
        }
    }
    sections
}

fn squeeze(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace() && *c != '"' && *c != '\'')
        .collect::<String>()
        .to_lowercase()
}

/// Where a text asks for abort, in any of the spellings cargo and rustc accept.
fn asks_for_abort(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        // `KEY: abort` is how YAML (template.yaml, a CI file) would set the variable.
        .filter(|line| squeeze(line).replace(':', "=").contains("panic=abort"))
        .map(|line| line.trim().to_string())
        .collect()
}

#[test]
fn the_release_profile_unwinds_explicitly() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let sections = sections(&manifest);
    let release = sections
        .iter()
        .find(|(name, _)| name == "profile.release")
        .map(|(_, entries)| entries)
        .expect("the workspace Cargo.toml has a [profile.release]");
    assert!(
        release.iter().any(|entry| entry == "panic=unwind"),
        "[profile.release] must say panic = \"unwind\": without it cargo-lambda builds with \
         panic=abort, and a panic kills the Lambda environment (entries: {release:?})"
    );
    for (name, entries) in &sections {
        if name.starts_with("profile.") {
            assert!(
                !entries.iter().any(|entry| entry == "panic=abort"),
                "[{name}] aborts on panic"
            );
        }
    }
}

#[test]
fn nothing_that_feeds_a_build_asks_for_abort() {
    let root = root();
    let mut files: Vec<PathBuf> = [
        "Cargo.toml",
        ".cargo/config.toml",
        ".cargo/config",
        "Makefile",
        "samconfig.toml",
        "template.yaml",
    ]
    .iter()
    .map(|path| root.join(path))
    .collect();
    // Every workspace member's manifest (cargo ignores their profiles, with a warning, but a
    // member moved out of the workspace would take its profile along).
    for dir in ["functions", "infra", "."] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            files.push(entry.path().join("Cargo.toml"));
        }
    }
    let mut checked = 0;
    let mut found = Vec::new();
    for file in files.iter().filter(|file| file.is_file()) {
        checked += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for line in asks_for_abort(&text) {
            found.push(format!("{}: {line}", file.display()));
        }
    }
    assert!(checked >= 8, "only {checked} build files found: {files:?}");
    assert!(found.is_empty(), "panic=abort requested: {found:#?}");
}

#[test]
fn the_checks_see_every_spelling_of_abort() {
    for line in [
        "panic = \"abort\"",
        "panic='abort'",
        "RUSTFLAGS=\"-C panic=abort\"",
        "export CARGO_PROFILE_RELEASE_PANIC=abort",
        "  - CARGO_PROFILE_RELEASE_PANIC: \"abort\"",
    ] {
        assert!(!asks_for_abort(line).is_empty(), "{line}");
    }
    assert!(asks_for_abort("panic = \"unwind\"\n# panic = \"abort\"").is_empty());
    let parsed = sections("[profile.release]\nlto = \"thin\"\npanic = 'unwind' # why\n");
    assert_eq!(parsed[1].0, "profile.release");
    assert_eq!(parsed[1].1, ["lto=thin", "panic=unwind"]);
}
