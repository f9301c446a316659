//! Starting and stopping a pool's replicas: a child process per replica
//! (`exec`), or a systemd template unit per replica (`systemd`).
//!
//! Exec children run in their own process group, with stdin closed and
//! their output logged line by line under the replica's id. They get
//! `PR_SET_PDEATHSIG = SIGKILL`: when inferlb dies, even by `kill -9`, the
//! kernel kills them, so nothing is orphaned and a restarted inferlb has
//! nothing to adopt. (The signal reaches the direct child: a command should
//! `exec` its server rather than fork it.) Stopping sends SIGTERM to the
//! group, then SIGKILL after the grace period.

#![allow(unsafe_code)]

use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use inferlb_core::{Provider, ReplicaId};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What a replica's `{...}` placeholders stand for.
#[derive(Debug, Clone)]
pub struct Slot<'a> {
    pub pool: &'a str,
    pub index: u32,
    pub port: u16,
    pub host: IpAddr,
}

impl Slot<'_> {
    /// `text` with `{port}`, `{index}`, `{pool}` and `{host}` replaced.
    pub fn fill(&self, text: &str) -> String {
        text.replace("{port}", &self.port.to_string())
            .replace("{index}", &self.index.to_string())
            .replace("{pool}", self.pool)
            .replace("{host}", &self.host.to_string())
    }
}

/// A started replica's process or unit.
#[derive(Debug)]
pub enum Running {
    Child { child: Child, pgid: i32 },
    Unit { unit: String },
}

/// The systemctl binary (found on `PATH`).
const SYSTEMCTL: &str = "systemctl";

/// The unit of replica `index`.
pub fn unit_name(template: &str, index: u32) -> String {
    template.replace("{index}", &index.to_string())
}

/// Starts replica `slot` of `provider`; its output is logged as `id`.
pub async fn start(
    provider: &Provider,
    slot: &Slot<'_>,
    id: &ReplicaId,
) -> Result<Running, String> {
    match provider {
        Provider::Exec { command, env } => {
            let argv: Vec<String> = command.iter().map(|a| slot.fill(a)).collect();
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .envs(env.iter().map(|(k, v)| (k, slot.fill(v))))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(false);
            let parent = std::process::id();
            // SAFETY: only async-signal-safe calls (prctl, getppid) between
            // fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // inferlb died between fork and prctl: do not start.
                    if libc::getppid() as u32 != parent {
                        return Err(std::io::Error::other("inferlb exited"));
                    }
                    Ok(())
                });
            }
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("cannot run {:?}: {e}", argv[0]))?;
            let pgid = child.id().map_or(0, |p| p as i32);
            if let Some(out) = child.stdout.take() {
                tokio::spawn(log_lines(out, id.clone(), "stdout"));
            }
            if let Some(err) = child.stderr.take() {
                tokio::spawn(log_lines(err, id.clone(), "stderr"));
            }
            Ok(Running::Child { child, pgid })
        }
        Provider::Systemd { unit, .. } => {
            let unit = unit_name(unit, slot.index);
            // Queued, not waited for: a unit that starts slowly (or fails)
            // shows in its health check and `is-active`, and the scaler
            // keeps deciding meanwhile.
            systemctl(&["start", "--no-block", &unit]).await?;
            Ok(Running::Unit { unit })
        }
    }
}

/// Why the replica is no longer running, when it is not.
pub async fn exited(running: &mut Running) -> Option<String> {
    match running {
        Running::Child { child, .. } => match child.try_wait() {
            Ok(Some(status)) => Some(format!("process exited ({status})")),
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait for the process: {e}")),
        },
        Running::Unit { unit } => {
            match Command::new(SYSTEMCTL)
                .args(["is-active", "--quiet", unit.as_str()])
                .stdin(Stdio::null())
                .status()
                .await
            {
                Ok(status) if status.success() => None,
                Ok(_) => Some(format!("unit {unit} is not active")),
                Err(e) => Some(format!("cannot run systemctl: {e}")),
            }
        }
    }
}

/// Stops the replica: SIGTERM to its process group, SIGKILL after `grace`;
/// or `systemctl stop` (the unit's own stop timeout applies).
pub async fn stop(running: Running, grace: Duration) {
    match running {
        Running::Child { mut child, pgid } => {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            signal_group(pgid, libc::SIGTERM);
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                tracing::warn!(
                    pid = pgid,
                    ?grace,
                    "replica did not stop within the grace period: SIGKILL"
                );
                signal_group(pgid, libc::SIGKILL);
                let _ = child.wait().await;
            }
            // Whatever else the replica started in its group goes too.
            signal_group(pgid, libc::SIGKILL);
        }
        Running::Unit { unit } => {
            if let Err(e) = systemctl(&["stop", &unit]).await {
                tracing::error!(%unit, error = %e, "cannot stop the unit");
            }
        }
    }
}

/// Stops units of `template` an earlier run may have left (index 0 to
/// `count - 1`): the pool starts from what it starts itself.
pub async fn stop_leftover_units(template: &str, count: u32) {
    let units: Vec<String> = (0..count).map(|i| unit_name(template, i)).collect();
    let mut args = vec!["stop"];
    args.extend(units.iter().map(String::as_str));
    if let Err(e) = systemctl(&args).await {
        tracing::warn!(error = %e, "cannot stop units left from an earlier run");
    }
}

fn signal_group(pgid: i32, signal: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) on a process group this process created; no
        // memory is shared with the call.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

async fn systemctl(args: &[&str]) -> Result<(), String> {
    let output = Command::new(SYSTEMCTL)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

async fn log_lines(stream: impl tokio::io::AsyncRead + Unpin, id: ReplicaId, which: &'static str) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = without_timestamp(&line);
        tracing::info!(target: "inferlb::replica", replica = %id, stream = which, "{line}");
    }
}

/// A child's log line without the time it stamped itself (inferlb's log
/// stamps it again): an RFC 3339 or `YYYY-MM-DD HH:MM:SS[,.]fff` time at the
/// start, bracketed or not, and vLLM's `LEVEL MM-DD HH:MM:SS` (its level
/// kept). Other lines are left as they are.
fn without_timestamp(line: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let digits = |s: &[u8], n: usize| s.len() >= n && s[..n].iter().all(u8::is_ascii_digit);
    // HH:MM:SS, then a fraction, then a zone; returns the length.
    let time = |s: &[u8]| -> Option<usize> {
        let ok = digits(s, 2)
            && s.get(2) == Some(&b':')
            && digits(&s[3..], 2)
            && s.get(5) == Some(&b':')
            && digits(&s[6..], 2);
        if !ok {
            return None;
        }
        let mut i = 8;
        if matches!(s.get(i), Some(b'.' | b',')) {
            i += 1;
            while s.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        match s.get(i) {
            Some(b'Z') => i += 1,
            Some(b'+' | b'-') if digits(&s[i + 1..], 2) => {
                i += 3;
                if s.get(i) == Some(&b':') {
                    i += 1;
                }
                while s.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            _ => {}
        }
        Some(i)
    };
    let bytes = line.as_bytes();
    let (open, start) = if bytes.first() == Some(&b'[') {
        (true, 1)
    } else {
        (false, 0)
    };
    let s = &bytes[start..];
    let date = digits(s, 4)
        && s.get(4) == Some(&b'-')
        && digits(&s[5..], 2)
        && s.get(7) == Some(&b'-')
        && digits(&s[8..], 2)
        && matches!(s.get(10), Some(b'T' | b' '));
    if date {
        if let Some(len) = time(&s[11..]) {
            let mut end = start + 11 + len;
            if open {
                if bytes.get(end) != Some(&b']') {
                    return Cow::Borrowed(line);
                }
                end += 1;
            }
            return Cow::Borrowed(line[end..].trim_start());
        }
        return Cow::Borrowed(line);
    }
    // vLLM: `INFO 12-03 20:28:02 [api_server.py:1] ...`
    if let Some(space) = line.find(' ') {
        let level = &line[..space];
        let rest = &bytes[space + 1..];
        let short_date = digits(rest, 2)
            && rest.get(2) == Some(&b'-')
            && digits(&rest[3..], 2)
            && rest.get(5) == Some(&b' ');
        if level.len() <= 8 && level.bytes().all(|b| b.is_ascii_uppercase()) && short_date {
            if let Some(len) = time(&rest[6..]) {
                let after = space + 1 + 6 + len;
                return Cow::Owned(format!("{level} {}", line[after..].trim_start()));
            }
        }
    }
    Cow::Borrowed(line)
}

#[cfg(test)]
mod tests {
    use super::without_timestamp;

    #[test]
    fn a_childs_own_timestamp_is_not_stamped_twice() {
        for (line, kept) in [
            (
                "2026-12-03T20:28:02.190560Z  INFO listening on 127.0.0.1:8000",
                "INFO listening on 127.0.0.1:8000",
            ),
            (
                "2026-12-03 20:28:02,123 - uvicorn - started",
                "- uvicorn - started",
            ),
            ("[2026-12-03 20:28:02.5+00:00] ready", "ready"),
            (
                "INFO 12-03 20:28:02 [api_server.py:1] Started server",
                "INFO [api_server.py:1] Started server",
            ),
            (
                "INFO:     Uvicorn running on http://0.0.0.0:8000",
                "INFO:     Uvicorn running on http://0.0.0.0:8000",
            ),
            ("2026 was a year", "2026 was a year"),
            ("", ""),
        ] {
            assert_eq!(without_timestamp(line), kept, "{line}");
        }
    }
}
