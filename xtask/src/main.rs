//! `cargo xtask`: the project's tasks, runnable on any Linux host with cargo.
//!
//! - `cargo xtask test`: formatting, lints and every test. CI runs exactly
//!   this (`.ci/run`); a failing step stops the run with its exit status.
//! - `cargo xtask dist`: a release tarball with the binary, the example
//!   config, the systemd unit and the monitoring files.
//! - `cargo xtask bench`: builds release binaries and runs the load
//!   scenarios of `benches/scenarios` against direct, inferlb, nginx and
//!   HAProxy (`--install-peers` installs the last two with apt-get).

#![forbid(unsafe_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("test") => test(&root, &args[1..]),
        Some("dist") => dist(&root),
        Some("lint-iam") => {
            // The venv comes with moto's.
            drop(Moto::start(&root)?);
            lint_iam_policy(&root)
        }
        Some("bench") => bench(&root, &args[1..]),
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
         dist    release tarball in target/dist/\n  \
         lint-iam  parliament over deploy/iam/inferlb-autoscaler.json (also part of test)\n  \
         bench   [SCENARIO ...] [--duration SECS] [--rounds N] [--peers nginx,haproxy,haproxy-tcp|none]\n          \
         [--workers N] [--install-peers]: load tests, results in target/bench/"
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
    step_with_env(root, name, program, args, &[])
}

/// Like [`step`], with extra environment variables.
fn step_with_env(
    root: &Path,
    name: &str,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<()> {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("==> {name}: {program} {}", args.join(" "));
    }
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run {program} for step {name:?}"))?;
    if !status.success() {
        bail!("step {name:?} failed ({status})");
    }
    Ok(())
}

/// Debian packages the build and the tests need: `protoc` (etcd-client's
/// build compiles etcd's protocol) and etcd (the fleet's tests run a real
/// three-member cluster), installed with apt-get when missing.
fn ensure_debian_tools(root: &Path) -> Result<()> {
    let wanted = [("protoc", "protobuf-compiler"), ("etcd", "etcd-server")];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(binary, _)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {binary} >/dev/null")])
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    if step_with_env(root, "install build and test tools", "apt-get", &args, &env).is_err() {
        // A fresh machine's package lists may be empty or old.
        step(root, "apt-get update", "apt-get", &["update", "-q"])?;
        step_with_env(root, "install build and test tools", "apt-get", &args, &env)?;
    }
    // Debian's etcd-server starts a system etcd on :2379; the tests start
    // their own and need nothing of it.
    let _ = Command::new("sh")
        .args(["-c", "systemctl disable --now etcd >/dev/null 2>&1 || true"])
        .status();
    Ok(())
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    ensure_debian_tools(root)?;
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
    let moto = Moto::start(root)?;
    lint_iam_policy(root)?;
    let mut args = vec!["test", "--workspace", "--locked"];
    args.extend(extra.iter().map(String::as_str));
    let python = root.join("target/moto-venv/bin/python");
    let python = python.to_string_lossy();
    let result = step_with_env(
        root,
        "test",
        &cargo,
        &args,
        &[
            ("INFERLB_MOTO_URL", moto.url.as_str()),
            ("INFERLB_PYTHON", &python),
        ],
    );
    drop(moto);
    result?;
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
    ensure_debian_tools(root)?;
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
            "deploy/systemd/inferlb.service.d/exec-provider.conf",
            "systemd/inferlb.service.d/exec-provider.conf",
        ),
        ("deploy/systemd/model@.service", "systemd/model@.service"),
        (
            "deploy/systemd/50-inferlb-model-units.rules",
            "systemd/50-inferlb-model-units.rules",
        ),
        (
            "deploy/autoscaling.example.toml",
            "etc/autoscaling.example.toml",
        ),
        (
            "deploy/iam/inferlb-autoscaler.json",
            "iam/inferlb-autoscaler.json",
        ),
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

/// The pinned AWS stand-in, installed into a venv under `target/`.
const MOTO_REQUIREMENTS: &str = "xtask/moto/requirements.txt";
/// The inference routers `cargo xtask bench prefix` compares with.
const ROUTERS_REQUIREMENTS: &str = "xtask/routers/requirements.txt";
/// How long moto_server may take to answer after start.
const MOTO_START: Duration = Duration::from_secs(60);

/// A running moto_server; stopped on drop.
struct Moto {
    child: Child,
    url: String,
}

/// The shipped IAM policy, checked by parliament (an IAM linter that knows
/// each action's resources and condition keys).
const IAM_POLICY: &str = "deploy/iam/inferlb-autoscaler.json";

/// Actions the policy grants on `*` on purpose (README, "IAM"): the writes
/// on scalable targets (their ARNs are made at registration; the
/// `service-namespace` condition limits them to SageMaker) and
/// `DescribeAlarms` (called with a name prefix).
const RESOURCE_STAR_ALLOWED: [&str; 7] = [
    "application-autoscaling:RegisterScalableTarget",
    "application-autoscaling:DeregisterScalableTarget",
    "application-autoscaling:PutScalingPolicy",
    "application-autoscaling:DeleteScalingPolicy",
    "application-autoscaling:PutScheduledAction",
    "application-autoscaling:DeleteScheduledAction",
    "cloudwatch:DescribeAlarms",
];

/// Runs parliament over the IAM policy; any finding fails (unknown actions,
/// condition keys an action does not have, malformed statements), except a
/// `Resource: "*"` kept on purpose for the actions above.
fn lint_iam_policy(root: &Path) -> Result<()> {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("==> iam policy: parliament {IAM_POLICY}");
    }
    let policy = std::fs::read_to_string(root.join(IAM_POLICY))
        .with_context(|| format!("cannot read {IAM_POLICY}"))?;
    let output = Command::new(root.join("target/moto-venv/bin/parliament"))
        .args(["--json", "--minimum_severity", "INFO", "--string", &policy])
        .stdin(Stdio::null())
        .current_dir(root)
        .output()
        .context("cannot run parliament (installed with moto)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut problems = Vec::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let finding: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("parliament printed something else: {line}"))?;
        let kept = finding["issue"] == "RESOURCE_STAR"
            && finding["detail"].as_array().is_some_and(|actions| {
                actions.iter().all(|a| {
                    a.as_str()
                        .is_some_and(|a| RESOURCE_STAR_ALLOWED.contains(&a))
                })
            });
        if !kept {
            problems.push(line.to_owned());
        }
    }
    if !output.status.success() && stdout.trim().is_empty() {
        bail!(
            "parliament failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if !problems.is_empty() {
        bail!(
            "parliament found problems in {IAM_POLICY}:\n{}",
            problems.join("\n")
        );
    }
    Ok(())
}

/// A venv under `target/` with `requirements` installed (pinned), made
/// again when the requirements file changes; returns its python.
fn venv(root: &Path, what: &str, dir: &str, requirements: &str) -> Result<PathBuf> {
    let venv = root.join(dir);
    let python = venv.join("bin/python");
    let stamp = venv.join(".installed");
    let wanted = std::fs::read_to_string(root.join(requirements))
        .with_context(|| format!("cannot read {requirements}"))?;
    let installed = std::fs::read_to_string(&stamp).unwrap_or_default();
    if installed != wanted {
        let venv_text = venv.to_string_lossy().into_owned();
        step(
            root,
            &format!("{what} venv"),
            "python3",
            &["-m", "venv", &venv_text],
        )?;
        let python_text = python.to_string_lossy().into_owned();
        step(
            root,
            &format!("{what} install"),
            &python_text,
            &[
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                requirements,
            ],
        )?;
        std::fs::write(&stamp, &wanted)
            .with_context(|| format!("cannot mark the {what} venv as installed"))?;
    }
    Ok(python)
}

impl Moto {
    /// Installs moto (once) and starts it on a free loopback port.
    fn start(root: &Path) -> Result<Self> {
        let python = venv(root, "moto", "target/moto-venv", MOTO_REQUIREMENTS)?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free port for moto_server")?
            .port();
        let log = std::fs::File::create(root.join("target/moto-server.log"))
            .context("cannot create the moto log")?;
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "==> moto: xtask/moto/serve.py on 127.0.0.1:{port} (log: target/moto-server.log)"
            );
        }
        let child = Command::new(&python)
            .arg(root.join("xtask/moto/serve.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start moto_server")?;
        let mut moto = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + MOTO_START;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(moto);
            }
            if let Some(status) = moto.child.try_wait()? {
                bail!("moto_server exited during start-up ({status}); see target/moto-server.log");
            }
            if Instant::now() > deadline {
                bail!(
                    "moto_server did not answer within {MOTO_START:?}; see target/moto-server.log"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(root: &Path, args: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    ensure_debian_tools(root)?;
    let mut forwarded: Vec<String> = Vec::new();
    let mut install = false;
    for arg in args {
        if arg == "--install-peers" {
            install = true;
        } else {
            forwarded.push(arg.clone());
        }
    }
    if install {
        step(root, "apt-get update", "apt-get", &["update", "-q"])?;
        step(
            root,
            "install peers",
            "apt-get",
            &[
                "install",
                "-y",
                "-q",
                "nginx-light",
                "haproxy",
                "nghttp2-client",
            ],
        )?;
    }
    // The prefix scenario's peers: SGLang's and vLLM's routers, from PyPI.
    let mut scenarios = Vec::new();
    let mut words = forwarded.iter();
    while let Some(word) = words.next() {
        if word.starts_with("--") {
            // A flag's value is not a scenario.
            if !word.contains('=') && !matches!(word.as_str(), "--help" | "-h") {
                words.next();
            }
        } else {
            scenarios.push(word.as_str());
        }
    }
    if scenarios.is_empty() || scenarios.contains(&"prefix") {
        venv(root, "routers", "target/routers-venv", ROUTERS_REQUIREMENTS)?;
    }
    step(
        root,
        "build",
        &cargo,
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "inferlb",
            "-p",
            "inferlb-benches",
        ],
    )?;
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let mut full = vec!["--commit".to_owned(), commit];
    full.extend(forwarded);
    let runner = root
        .join("target/release/inferlb-bench")
        .to_string_lossy()
        .into_owned();
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    step(root, "bench", &runner, &full)
}
