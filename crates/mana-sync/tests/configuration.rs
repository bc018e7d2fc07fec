//! What an operator sees of the configuration: `mana-sync serve --help`
//! lists every setting with its environment variable and default (the
//! same ones as the README's table), and a mistake ends the process with a
//! non-zero exit and one line on stderr naming it: never a panic, a
//! backtrace or a page of usage.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

/// Runs `mana-sync ARGS` with only `env` set (and a backtrace asked for,
/// which must not appear), in an empty directory; returns the exit code
/// and stderr.
async fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(common::BINARY)
            .args(args)
            .env_clear()
            .env("RUST_BACKTRACE", "1")
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("JWT_SECRET", mana_sync_testkit::server::TEST_SECRET)
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `serve` with `env` fails with one line on stderr mentioning each of
/// `needles`.
async fn refuses(env: &[(&str, &str)], needles: &[&str]) {
    let (code, stderr) = run(&["serve"], env).await;
    assert!(
        matches!(code, Some(code) if code != 0),
        "{env:?} exited with {code:?}: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{env:?}: one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{env:?}: `{needle}` in {stderr}");
    }
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[tokio::test]
async fn bad_values_are_one_line_naming_the_setting() {
    refuses(&[("PORT", "abc")], &["'abc'", "PORT"]).await;
    refuses(&[("DATABASE_POOL_SIZE", "-1")], &["DATABASE_POOL_SIZE"]).await;
    refuses(&[("HOST", "example.com")], &["HOST"]).await;
    refuses(&[("LOG_FORMAT", "xml")], &["'xml'", "LOG_FORMAT"]).await;
    refuses(&[("RUST_LOG", "[[")], &["RUST_LOG"]).await;
    refuses(&[("JWT_SECRET", "short")], &["at least 32 bytes"]).await;
}

#[tokio::test]
async fn bad_database_urls_are_one_line_naming_the_problem() {
    refuses(&[("DATABASE_URL", "mysql://db/x")], &["mysql://db/x"]).await;
    // The password never shows.
    refuses(
        &[(
            "DATABASE_URL",
            "postgres://app:hunter2@127.0.0.1/x?sslmode=verify",
        )],
        &["sslmode `verify`", "app:***@"],
    )
    .await;
    let (_, stderr) = run(
        &["serve"],
        &[(
            "DATABASE_URL",
            "postgres://app:hunter2@127.0.0.1/x?sslmode=verify",
        )],
    )
    .await;
    assert!(!stderr.contains("hunter2"), "{stderr}");
    refuses(
        &[(
            "DATABASE_URL",
            "postgres://app@127.0.0.1/x?sslmode=verify-ca",
        )],
        &["sslrootcert"],
    )
    .await;
}

#[tokio::test]
async fn an_unreadable_root_certificate_is_one_line_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.pem");
    let url = |file: &std::path::Path| {
        format!(
            "postgres://app@127.0.0.1/x?sslmode=verify-full&sslrootcert={}",
            file.display()
        )
    };
    let missing_url = url(&missing);
    refuses(
        &[("DATABASE_URL", &missing_url)],
        &[&missing.display().to_string(), "No such file"],
    )
    .await;
    // A directory cannot be read as a file (root reads any file, whatever
    // its mode, so this is the unreadable case that holds for everyone).
    let directory_url = url(dir.path());
    refuses(
        &[("DATABASE_URL", &directory_url)],
        &[&dir.path().display().to_string(), "directory"],
    )
    .await;
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").expect("written");
    let not_pem_url = url(&not_pem);
    refuses(&[("DATABASE_URL", &not_pem_url)], &["no PEM certificate"]).await;
}

#[tokio::test]
async fn a_port_in_use_is_one_line_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let port = taken.local_addr().expect("address").port().to_string();
    refuses(
        &[("PORT", &port)],
        &[&format!("127.0.0.1:{port}"), "in use"],
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_database_is_one_line() {
    // Nothing listens on port 1.
    refuses(
        &[("DATABASE_URL", "postgres://app@127.0.0.1:1/x")],
        &["database unavailable", "refused"],
    )
    .await;
}

#[tokio::test]
async fn the_other_commands_fail_the_same_way() {
    let (code, stderr) = run(
        &["export", "--user", "alice"],
        &[("DATABASE_URL", "postgres://app@127.0.0.1/x?sslmode=nope")],
    )
    .await;
    assert_ne!(code, Some(0));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("sslmode `nope`"), "{stderr}");
    // A missing argument: clap's message, without the usage after it.
    let (code, stderr) = run(&["import"], &[]).await;
    assert_eq!(code, Some(2));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--user"), "{stderr}");
}

/// The option blocks of `serve --help`: each starts with its flag line.
fn option_blocks(help: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    for line in help
        .lines()
        .skip_while(|line| !line.starts_with("Options:"))
        .skip(1)
    {
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") || trimmed.starts_with("-h,") {
            blocks.push(trimmed.to_owned());
        } else if let Some(block) = blocks.last_mut() {
            block.push(' ');
            block.push_str(line.trim());
        }
    }
    blocks
}

/// The variables named in the first column of the README's configuration
/// table.
fn readme_variables() -> BTreeSet<String> {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("README has a Configuration section");
    let section = section.split("\n#").next().unwrap_or(section);
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .flat_map(|line| {
            let first = line.split('|').nth(1).unwrap_or_default();
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn serve_help_lists_every_setting_with_its_variable_and_default() {
    let output = tokio::process::Command::new(common::BINARY)
        .args(["serve", "--help"])
        .env_clear()
        .output()
        .await
        .expect("runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    let mut variables = BTreeSet::new();
    for block in option_blocks(&help) {
        if block.starts_with("-h,") {
            continue;
        }
        let variable = block
            .split("[env: ")
            .nth(1)
            .and_then(|rest| rest.split([']', '=']).next())
            .unwrap_or_else(|| panic!("no environment variable: {block}"));
        assert!(block.contains("[default: "), "no default: {block}");
        variables.insert(variable.to_owned());
    }
    assert_eq!(
        variables,
        readme_variables(),
        "serve --help and the README's Configuration table list the same settings"
    );
    // Secrets and URLs with credentials are not echoed from the environment.
    let output = tokio::process::Command::new(common::BINARY)
        .args(["serve", "--help"])
        .env_clear()
        .env("DATABASE_URL", "postgres://app:hunter2@db/x")
        .env("JWT_SECRET", "a-secret-that-is-long-enough-to-be-used-0123")
        .output()
        .await
        .expect("runs");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        !help.contains("hunter2") && !help.contains("a-secret-that"),
        "{help}"
    );
}
