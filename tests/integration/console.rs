//! The web console in a real browser (issue 15): `tests/console/*.test.mjs` drives Debian's
//! headless Chromium with playwright-core against this test binary's local stack. It signs
//! in with a token, sees the queues, finds a task created through the API in the list (its
//! title, `<img src=x onerror=alert(1)>`, shown as text), sees an API refusal in words,
//! cancels the task after confirming, completes a chain's waiting manual step, sees a batch's
//! failed items, retries them and sees the batch complete; axe-core checks each view.
//!
//! Needs `/usr/bin/chromium` (`make browser`) and `node_modules` (`npm ci`); `make
//! test-integration` provides both. `SCREENSHOTS=1` also saves the main views to
//! docs/screenshots/ (`make screenshots`).

use integration_tests::{scaled, stack, time_factor, unique_agency, TEST_SECRET};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The script's own waits are shorter; this only stops a hung browser (scaled by load).
const RUN_LIMIT: Duration = Duration::from_secs(180);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

#[tokio::test]
async fn the_console_works_in_a_browser() {
    let root = repo_root();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: `make browser` installs Debian's chromium"
    );
    assert!(
        root.join("node_modules/playwright-core").is_dir(),
        "node_modules is missing: `make node_modules` (npm ci) installs playwright-core"
    );
    let stack = stack();
    let agency = unique_agency("console");
    let manager = "boss";
    let token = local_stack::jwt::sign(TEST_SECRET, manager, &agency, "manager", 3600);
    let member = "alice";
    let member_token = local_stack::jwt::sign(TEST_SECRET, member, &agency, "member", 3600);
    let screenshots = std::env::var_os("SCREENSHOTS")
        .filter(|v| !v.is_empty() && v != "0")
        .map(|_| root.join("docs/screenshots"));

    let started = Instant::now();
    let mut command = tokio::process::Command::new("node");
    command
        .current_dir(&root)
        .args(["--test", "--test-reporter=spec", "tests/console/"])
        .env("CONSOLE_URL", format!("{}/console/", stack.api_url))
        .env("API_URL", format!("{}/api", stack.api_url))
        .env("MANAGER_TOKEN", &token)
        .env("MANAGER_ID", manager)
        .env("MEMBER_TOKEN", &member_token)
        .env("MEMBER_ID", member)
        .env("CHROMIUM", &chromium)
        // The script's waits for the stack's work (a chain, a batch) grow with the load, as
        // every end-to-end deadline does.
        .env("TIME_FACTOR", format!("{:.2}", time_factor()))
        .env_remove("SCREENSHOTS")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(dir) = &screenshots {
        command.env("SCREENSHOTS", dir);
    }
    let output = tokio::time::timeout(scaled(RUN_LIMIT), command.output())
        .await
        .expect("the browser test finishes within its limit")
        .expect("node runs (is Node.js 20+ installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    println!(
        "browser test passed in {:.1} s\n{stdout}",
        started.elapsed().as_secs_f64()
    );
}
