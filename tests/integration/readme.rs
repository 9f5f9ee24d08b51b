//! README.md is executable (issue 19): every ```sh block, in order, run with bash in one shell
//! session against this test binary's local stack, exactly as a reader would paste them after
//! `make dev`.
//!
//! How the run matches a reader's:
//! - **`make dev` is this test's stack.** The block that starts it is skipped (its marker says
//!   so); the harness's stack runs the same function binaries from template.yaml on 127.0.0.1.
//!   Its API listens on a free port, so the one text change made to the blocks is the README's
//!   documented base URL, `http://127.0.0.1:3000`, becoming this stack's. The shell's working
//!   directory is the repository root (where `make` works), and `LOCAL_JWT_SECRET` is set to the
//!   stack's signing secret, so `make -s token …` signs tokens this stack accepts.
//! - **`make`'s cargo runs the built binary.** `cargo test` holds the build directory's lock
//!   while tests run, so the `cargo run -p local-stack` behind `make token` would wait for it
//!   forever. The session's `CARGO` (which the Makefile takes from the environment) is a shim
//!   that runs the `local-stack` binary `cargo build` made (`make test-integration` builds it)
//!   and refuses any other cargo command.
//! - **One session, strict.** The blocks run in one `bash` with `set -euo pipefail`: a variable
//!   set by one block is seen by later ones, an unset one fails, and every block must exit 0.
//! - **Skipped blocks** carry a visible marker on the line right before their fence:
//!   `<!-- readme-test: skip (reason) -->`. They need an AWS account or Docker, start the
//!   long-running stack, or run a whole test suite. The test prints each with its reason.
//! - **Expected output.** A line `# => TEXT` in a block says what the commands above it (back to
//!   the previous `# =>` line or the block's start) print: their stdout must contain TEXT. A
//!   reader sees it as a comment; bash ignores it.
//! - **No silent API errors.** `curl -s` exits 0 on a 4xx, so output holding the API's error shape
//!   (`{"error":{"code":`) fails the test unless that part's `# =>` expects `"error"`.
//! - Background processes a block starts (a local http receiver) die with the session's process
//!   group when the test ends.

use integration_tests::{stack, TEST_SECRET};
use std::time::Duration;

const README_BASE_URL: &str = "http://127.0.0.1:3000";
const SKIP_MARKER: &str = "<!-- readme-test: skip (";
const EXPECT: &str = "# => ";
/// Separates the parts' outputs on stdout: a byte no example prints.
const PART_END: char = '\u{1e}';
/// The whole README, generous for a loaded 2-core machine (it takes about 40 s idle).
const RUN_LIMIT: Duration = Duration::from_secs(240);

#[derive(Debug, PartialEq)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    text: String,
    skip: Option<String>,
}

/// The ```sh blocks of a markdown text, in order, each with its skip reason if marked.
fn sh_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut skip: Option<String> = None;
    let mut lines = markdown.lines().enumerate();
    while let Some((number, line)) = lines.next() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix(SKIP_MARKER) {
            let reason = rest.strip_suffix(") -->").unwrap_or_else(|| {
                panic!("README.md:{}: a skip marker ends with ') -->'", number + 1)
            });
            skip = Some(reason.to_owned());
            continue;
        }
        if trimmed.starts_with("```") {
            let is_sh = trimmed == "```sh";
            let mut text = String::new();
            for (_, inner) in lines.by_ref() {
                if inner.trim_start().starts_with("```") {
                    break;
                }
                text.push_str(inner);
                text.push('\n');
            }
            if is_sh {
                blocks.push(Block {
                    line: number + 1,
                    text,
                    skip: skip.take(),
                });
            } else {
                assert!(
                    skip.is_none(),
                    "README.md:{}: a skip marker stands before a block that is not ```sh",
                    number + 1
                );
            }
            continue;
        }
        if !trimmed.is_empty() {
            assert!(
                skip.is_none(),
                "README.md:{}: a skip marker must stand right before its ```sh fence",
                number + 1
            );
        }
    }
    blocks
}

/// A block cut at its `# =>` lines: (commands, what their output must contain).
fn parts(block: &str) -> Vec<(String, Option<String>)> {
    let mut parts = Vec::new();
    let mut commands = String::new();
    for line in block.lines() {
        if let Some(expected) = line.trim().strip_prefix(EXPECT) {
            parts.push((std::mem::take(&mut commands), Some(expected.to_owned())));
        } else {
            commands.push_str(line);
            commands.push('\n');
        }
    }
    if !commands.trim().is_empty() {
        parts.push((commands, None));
    }
    parts
}

/// The `local-stack` binary of the debug build (`$CARGO_TARGET_DIR/debug`, else `target/debug`).
fn local_stack_binary() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| local_stack::StackOptions::repo_root().join("target"));
    let binary = target.join("debug").join("local-stack");
    assert!(
        binary.is_file(),
        "{} is missing: cargo build -p local-stack --bin local-stack (make test-integration does)",
        binary.display()
    );
    binary
}

/// `cargo run --quiet -p local-stack -- ARGS` (the Makefile's token, redrive and invoke) runs
/// the built binary; any other cargo command fails and says so.
fn cargo_shim_script(local_stack: &std::path::Path) -> String {
    format!(
        r#"#!/bin/bash
if [ "$1 $2 $3 $4 $5" = "run --quiet -p local-stack --" ]; then
  shift 5
  exec '{}' "$@"
fi
echo "README test: cargo $* would wait for the lock cargo test holds; only cargo run -p local-stack is provided" >&2
exit 1
"#,
        local_stack.display()
    )
}

#[test]
fn blocks_and_parts_are_read_as_documented() {
    let markdown = "intro\n```sh\nmake dev\n```\n<!-- readme-test: skip (needs an AWS account) -->\n\
                    ```sh\nsam deploy\n```\n```json\n{}\n```\n```sh\nA=1\necho $A\n# => 1\necho two\n```\n";
    let blocks = sh_blocks(markdown);
    assert_eq!(blocks.len(), 3);
    assert_eq!((blocks[0].line, blocks[0].skip.as_deref()), (2, None));
    assert_eq!(blocks[1].skip.as_deref(), Some("needs an AWS account"));
    assert_eq!(
        parts(&blocks[2].text),
        vec![
            ("A=1\necho $A\n".to_owned(), Some("1".to_owned())),
            ("echo two\n".to_owned(), None)
        ]
    );
}

#[tokio::test]
async fn every_readme_shell_example_runs_as_written() {
    let root = local_stack::StackOptions::repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = sh_blocks(&readme);
    assert!(blocks.len() > 5, "README.md has its shell examples");

    // One script: each part, then a separator carrying its block and part number.
    let mut script = String::from("set -euo pipefail\n");
    let mut expectations = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        if let Some(reason) = &block.skip {
            println!(
                "SKIPPED README.md:{} ({reason}):\n{}",
                block.line,
                block.text.trim_end()
            );
            continue;
        }
        for (commands, expected) in parts(&block.text) {
            script.push_str(&commands.replace(README_BASE_URL, &stack().api_url));
            script.push_str(&format!("printf '\\n{PART_END}\\n'\n"));
            expectations.push((index, commands, expected));
        }
    }
    let dir = std::env::temp_dir().join(format!("readme-test-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let script_path = dir.join("readme.sh");
    std::fs::write(&script_path, &script).unwrap();
    let cargo_shim = dir.join("cargo");
    std::fs::write(&cargo_shim, cargo_shim_script(&local_stack_binary())).unwrap();
    std::fs::set_permissions(
        &cargo_shim,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    // Outputs go to files, so that a run cut off at the limit still shows how far it got.
    let (stdout_path, stderr_path) = (dir.join("stdout"), dir.join("stderr"));
    let file = |path: &std::path::Path| std::fs::File::create(path).unwrap();
    let mut bash = tokio::process::Command::new("bash");
    bash.arg(&script_path)
        .current_dir(&root)
        .env(
            "LOCAL_JWT_SECRET",
            std::str::from_utf8(TEST_SECRET).unwrap(),
        )
        .env("CARGO", &cargo_shim)
        // What `make upload` reads from the running `make dev` stack's manifest.
        .env("TASKFLOW_BATCH_BUCKET", &stack().config.batch_bucket)
        .env(
            "TASKFLOW_EMULATOR_ENDPOINT",
            stack().endpoints.endpoint_for("S3"),
        )
        .stdin(std::process::Stdio::null())
        .stdout(file(&stdout_path))
        .stderr(file(&stderr_path))
        .process_group(0)
        .kill_on_drop(true);
    let mut child = bash.spawn().expect("bash");
    let group = child.id().expect("pid");
    let outcome = tokio::time::timeout(RUN_LIMIT, child.wait()).await;
    // Whatever the outcome, nothing the examples started outlives the test.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .status();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    std::fs::remove_dir_all(&dir).ok();
    let status = match outcome {
        Ok(status) => status.expect("bash ran"),
        Err(_) => panic!(
            "the README's examples took longer than {RUN_LIMIT:?}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}"
        ),
    };

    let outputs: Vec<&str> = stdout.split(&format!("\n{PART_END}\n")).collect();
    for (n, (index, commands, expected)) in expectations.iter().enumerate() {
        let block = &blocks[*index];
        let Some(printed) = outputs.get(n).filter(|_| n + 1 < outputs.len()) else {
            panic!(
                "README.md:{}: the block exited with {} in this part:\n{}\n--- its output:\n{}\n--- stderr:\n{stderr}",
                block.line,
                status,
                commands.trim_end(),
                outputs.get(n).unwrap_or(&"")
            );
        };
        println!(
            "README.md:{}:\n{}\n--- printed:\n{}\n",
            block.line,
            commands.trim_end(),
            printed.trim()
        );
        if let Some(expected) = expected {
            assert!(
                printed.contains(expected.as_str()),
                "README.md:{}: expected the output to contain {expected}\n--- commands:\n{}\n--- printed:\n{printed}\n--- stderr:\n{stderr}",
                block.line,
                commands.trim_end()
            );
        }
        let expects_error = expected.as_deref().is_some_and(|e| e.contains("\"error\""));
        assert!(
            expects_error || !printed.contains(r#"{"error":{"code":"#),
            "README.md:{}: an API error the text does not expect\n--- commands:\n{}\n--- printed:\n{printed}",
            block.line,
            commands.trim_end()
        );
    }
    assert!(status.success(), "bash: {}\n{stderr}", status);
}
