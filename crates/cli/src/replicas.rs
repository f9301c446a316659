//! `inferlb replicas ...`: the admin API from the command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Flags shared by every `replicas` command.
#[derive(Debug, Args)]
pub(crate) struct ReplicasArgs {
    /// Admin API base URL.
    #[arg(
        long,
        global = true,
        env = "INFERLB_ADMIN",
        default_value = "http://127.0.0.1:9090"
    )]
    admin: String,
    /// File holding the admin bearer token (or set INFERLB_ADMIN_TOKEN).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ReplicasCommand,
}

#[derive(Debug, Subcommand)]
enum ReplicasCommand {
    /// List replicas.
    List {
        /// Only this pool's.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Add a replica.
    Add {
        /// ip:port or host:port.
        address: String,
        /// 0..=1000.
        #[arg(long)]
        weight: Option<u64>,
        /// Stable id [default: derived from the address].
        #[arg(long)]
        id: Option<String>,
        /// The pool (model) it serves [default: the default pool]. A pool
        /// that does not exist is refused (a typo would make a new pool
        /// nobody routes to) unless --create-pool.
        #[arg(long)]
        pool: Option<String>,
        /// Create the pool when it does not exist yet.
        #[arg(long, requires = "pool")]
        create_pool: bool,
    },
    /// Drain a replica: no new requests; removed when in-flight requests finish.
    Drain {
        id: String,
        /// Seconds to wait for in-flight requests [default: 300].
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Remove a replica now, closing its connections.
    Remove { id: String },
    /// Change a replica's weight.
    SetWeight { id: String, weight: u64 },
}

struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.base.trim_end_matches('/'));
        let mut request = self.agent.request(method, &url);
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(e) => return Err(anyhow!("cannot reach the admin API at {}: {e}", self.base)),
        };
        let status = response.status();
        let text = response
            .into_string()
            .context("cannot read the admin API's answer")?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status == 401 {
            bail!(
                "{method} {path}: 401: the admin API wants its bearer token: pass --token-file FILE or set INFERLB_ADMIN_TOKEN{}",
                if self.token.is_some() { " (the one given was refused)" } else { "" }
            );
        }
        if status >= 400 {
            let message = value
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("{method} {path}: {status}: {message}");
        }
        Ok((status, value))
    }
}

/// The admin API's base URL: `host:port` works without `http://`.
fn admin_base(admin: &str) -> String {
    if admin.contains("://") {
        admin.to_owned()
    } else {
        format!("http://{admin}")
    }
}

fn table(replicas: &[Value]) -> String {
    let headers = [
        "ID",
        "POOL",
        "ADDRESS",
        "WEIGHT",
        "STATE",
        "IN-FLIGHT",
        "REQUESTS",
        "ERRORS",
    ];
    let rows: Vec<Vec<String>> = replicas
        .iter()
        .map(|r| {
            let text = |k: &str| match r.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            };
            vec![
                text("id"),
                text("pool"),
                text("address"),
                text("weight"),
                text("state"),
                text("in_flight"),
                text("requests"),
                text("errors"),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(args: ReplicasArgs) -> Result<()> {
    let token = crate::serve::admin_token(args.token_file.as_deref())?;
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let client = Client {
        base: admin_base(&args.admin),
        token,
        agent,
    };
    let (_, value) =
        match &args.command {
            ReplicasCommand::List { pool: None } => client.request("GET", "/v1/replicas", None)?,
            ReplicasCommand::List { pool: Some(pool) } => {
                let (status, value) = client.request("GET", &format!("/v1/pools/{pool}"), None)?;
                (
                    status,
                    value.get("replicas").cloned().unwrap_or(Value::Null),
                )
            }
            ReplicasCommand::Add {
                address,
                weight,
                id,
                pool,
                create_pool,
            } => {
                if let (Some(name), false) = (pool, create_pool) {
                    let (_, pools) = client.request("GET", "/v1/pools", None)?;
                    let known: Vec<&str> = pools
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["name"].as_str())
                        .collect();
                    let aliases = pools
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|p| p["aliases"].as_array().into_iter().flatten())
                        .filter_map(Value::as_str);
                    if !known.contains(&name.as_str()) && !aliases.clone().any(|a| a == name) {
                        bail!(
                        "no pool is named {name:?} (pools: {}); pass --create-pool to create it",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    );
                    }
                }
                let mut body = json!({ "address": address });
                if let Some(w) = weight {
                    body["weight"] = json!(w);
                }
                if let Some(id) = id {
                    body["id"] = json!(id);
                }
                if let Some(pool) = pool {
                    body["pool"] = json!(pool);
                }
                client.request("POST", "/v1/replicas", Some(body))?
            }
            ReplicasCommand::Drain { id, timeout } => {
                let query = timeout
                    .map(|t| format!("?drain_timeout_s={t}"))
                    .unwrap_or_default();
                client.request("DELETE", &format!("/v1/replicas/{id}{query}"), None)?
            }
            ReplicasCommand::Remove { id } => client.request(
                "DELETE",
                &format!("/v1/replicas/{id}?drain_timeout_s=0"),
                None,
            )?,
            ReplicasCommand::SetWeight { id, weight } => client.request(
                "PATCH",
                &format!("/v1/replicas/{id}"),
                Some(json!({ "weight": weight })),
            )?,
        };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    match (&args.command, &value) {
        (ReplicasCommand::List { .. }, Value::Array(list)) => print!("{}", table(list)),
        (ReplicasCommand::Drain { id, .. }, _) => println!("replica {id} is draining"),
        (ReplicasCommand::Remove { id }, _) => println!("replica {id} removed"),
        (_, Value::Object(_)) => print!("{}", table(std::slice::from_ref(&value))),
        _ => println!("{value}"),
    }
    Ok(())
}
