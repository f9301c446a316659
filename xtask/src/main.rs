//! `cargo xtask`: the project's tasks, runnable on any Linux host with cargo.
//!
//! - `cargo xtask test`: formatting, lints and every test. CI runs exactly
//!   this (`.ci/run`); a failing step stops the run with its exit status.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("test") => test(&root, &args[1..]),
        Some("help") | Some("--help") | Some("-h") | None => {
            usage();
            Ok(())
        }
        Some(other) => {
            usage();
            bail!("unknown task {other:?}")
        }
    }
}

#[allow(clippy::print_stderr)]
fn usage() {
    eprintln!(
        "usage: cargo xtask <task>\n\n\
         tasks:\n  \
         test    cargo fmt --check, cargo clippy -D warnings, cargo test --workspace"
    );
}

fn workspace_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from("xtask"), PathBuf::from);
    manifest
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs one step, echoing it first; fails with the step's name.
fn step(root: &Path, name: &str, program: &str, args: &[&str]) -> Result<()> {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("==> {name}: {program} {}", args.join(" "));
    }
    let status = Command::new(program)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run {program} for step {name:?}"))?;
    if !status.success() {
        bail!("step {name:?} failed ({status})");
    }
    Ok(())
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    step(root, "format", &cargo, &["fmt", "--all", "--check"])?;
    step(
        root,
        "lint",
        &cargo,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    let mut args = vec!["test", "--workspace", "--locked"];
    args.extend(extra.iter().map(String::as_str));
    step(root, "test", &cargo, &args)?;
    #[allow(clippy::print_stderr)]
    {
        eprintln!("==> all checks passed");
    }
    Ok(())
}
