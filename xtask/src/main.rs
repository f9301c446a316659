//! `cargo xtask`: the project's tasks, runnable on any Linux host with cargo.
//!
//! - `cargo xtask test`: formatting, lints and every test. CI runs exactly
//!   this (`.ci/run`); a failing step stops the run with its exit status.
//! - `cargo xtask dist`: a release tarball with the binary, the example
//!   config, the systemd unit and the monitoring files.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("test") => test(&root, &args[1..]),
        Some("dist") => dist(&root),
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
         test    cargo fmt --check, cargo clippy -D warnings, cargo test --workspace\n  \
         dist    release tarball in target/dist/"
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

/// The version in the workspace manifest.
fn version(root: &Path) -> Result<String> {
    let manifest =
        std::fs::read_to_string(root.join("Cargo.toml")).context("cannot read Cargo.toml")?;
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| {
            l.trim()
                .strip_prefix("version = ")
                .map(|v| v.trim_matches('"').to_owned())
        })
        .context("no version in [workspace.package]")
}

fn dist(root: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    step(
        root,
        "build",
        &cargo,
        &["build", "--release", "--locked", "-p", "inferlb"],
    )?;
    let name = format!(
        "inferlb-{}-{}-linux",
        version(root)?,
        std::env::consts::ARCH
    );
    let dist = root.join("target/dist");
    let stage = dist.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)
            .with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    let files = [
        ("target/release/inferlb", "bin/inferlb"),
        ("deploy/inferlb.toml", "etc/inferlb.toml"),
        ("deploy/systemd/inferlb.service", "systemd/inferlb.service"),
        (
            "deploy/prometheus/prometheus.yml",
            "prometheus/prometheus.yml",
        ),
        (
            "deploy/prometheus/grafana-dashboard.json",
            "prometheus/grafana-dashboard.json",
        ),
        ("README.md", "README.md"),
    ];
    for (from, to) in files {
        let target = stage.join(to);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::copy(root.join(from), &target)
            .with_context(|| format!("cannot copy {from} into the tarball"))?;
    }
    let tarball = format!("{name}.tar.gz");
    step(&dist, "package", "tar", &["czf", &tarball, &name])?;
    #[allow(clippy::print_stderr)]
    {
        eprintln!("==> {}", dist.join(&tarball).display());
    }
    Ok(())
}
