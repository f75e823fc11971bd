//! The facts about the machine the report opens with, and the command that
//! reproduces it.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::Settings;

pub fn run_cmd(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub fn machine_facts(pg_version: &str) -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_owned(), |(_, v)| v.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let manifest = env!("CARGO_MANIFEST_DIR");
    let commit = run_cmd("git", &["-C", manifest, "rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = run_cmd(
        "git",
        &["-C", manifest, "status", "--porcelain", "--untracked-files=no"],
    )
    .is_some_and(|s| !s.is_empty());
    let emulator =
        std::fs::read_to_string(Path::new(manifest).join("tools/sqs/node_modules/local-aws-sqs/package.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned))
            .map_or("local-aws-sqs".to_owned(), |v| format!("local-aws-sqs {v}"));
    let node = run_cmd("node", &["--version"]).unwrap_or_else(|| "node ?".into());
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    vec![
        (
            "date (UTC)",
            run_cmd("date", &["-u", "+%Y-%m-%d %H:%M:%S"]).unwrap_or_default(),
        ),
        (
            "git commit",
            format!(
                "{commit}{}",
                if dirty {
                    " (with uncommitted changes to tracked files)"
                } else {
                    ""
                }
            ),
        ),
        ("nproc", run_cmd("nproc", &[]).unwrap_or_default()),
        ("CPU model", model),
        ("memory", format!("{:.1} GiB", mem_kib / 1024.0 / 1024.0)),
        ("kernel", run_cmd("uname", &["-sr"]).unwrap_or_default()),
        ("load average at start (1/5/15 min)", loadavg),
        ("rustc", run_cmd("rustc", &["--version"]).unwrap_or_default()),
        ("Postgres", pg_version.to_owned()),
        ("SQS emulator", format!("{emulator} on Node {node}")),
    ]
}

pub fn reproduce_command(s: &Settings) -> String {
    let mut parts = Vec::new();
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        parts.push(format!("CARGO_TARGET_DIR={t}"));
    }
    parts.extend(s.overrides.iter().cloned());
    parts.push("scripts/bench".into());
    // `scripts/bench --baseline <commit>` names its binary `sluicegate-<commit>`.
    if let Some(base) = crate::baseline::baseline_binary() {
        match base
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("sluicegate-"))
        {
            Some(rev) => parts.push(format!("--baseline {rev}")),
            None => parts.insert(0, format!("SLUICEGATE_BENCH_BASELINE={}", base.display())),
        }
    }
    parts.join(" ")
}
