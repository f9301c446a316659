//! `inferlb check --config FILE` (nginx -t, haproxy -c): every problem of a
//! config file at once, each with its field path, then exit non-zero. What
//! it checks, `serve` checks at start too.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use inferlb_core::config::Problem;
use inferlb_core::{Config, ConfigError, Provider};

/// Flags of `inferlb check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The TOML config file to check.
    #[arg(long, short = 'c', env = "INFERLB_CONFIG")]
    pub(crate) config: PathBuf,
}

pub(crate) fn run(args: CheckArgs) -> Result<ExitCode> {
    let path = args.config.display();
    let problems = match Config::check(&args.config) {
        Ok(config) => {
            let mut problems = commands(&config);
            problems.extend(inferlb_proxy::check_certificates(&config.proxy));
            problems.extend(inferlb_proxy::check_upstream_tls(&config.pools));
            problems
        }
        Err(ConfigError::Parse(message)) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{message}");
            }
            return Ok(ExitCode::FAILURE);
        }
        Err(ConfigError::Invalid(problems)) => problems,
    };
    #[allow(clippy::print_stdout, clippy::print_stderr)]
    if problems.is_empty() {
        println!("{path}: the configuration is valid");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{path}: {} problem(s):", problems.len());
        for problem in &problems {
            eprintln!("  {problem}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// The `exec` providers' commands that do not exist or cannot be run, each
/// under its field: a pool that would start no replica is found now, not
/// at its first request.
pub(crate) fn commands(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, pool) in config.pools.iter().enumerate() {
        let Some(Provider::Exec { command, .. }) = pool.autoscaling.as_deref().map(|a| &a.provider)
        else {
            continue;
        };
        let Some(program) = command.first() else {
            continue;
        };
        if let Err(reason) = runnable(program) {
            problems.push(Problem {
                field: format!("pools[{i}].autoscaling.command"),
                reason,
            });
        }
    }
    problems
}

/// Whether `program` (a path, or a name looked up in `PATH`) is an
/// executable file.
fn runnable(program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = Path::new(program);
        return match std::fs::metadata(path) {
            Err(e) => Err(format!("{program:?}: {e}")),
            Ok(_) if !executable(path) => Err(format!("{program:?} is not an executable file")),
            Ok(_) => Ok(()),
        };
    }
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| executable(&dir.join(program))))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(format!("{program:?} is not found in PATH"))
    }
}
