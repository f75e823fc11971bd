//! Starting an SQS emulator from Rust (the benchmark; the test suite gets
//! its endpoints from `scripts/test`). Runs `scripts/sqs-emulator`, so there
//! is one way to start either server.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Which SQS-protocol server.
#[derive(Clone, Copy, Debug)]
pub enum Emulator {
    /// moto (Python): the reference for behaviour.
    Moto,
    /// local-aws-sqs (Node, `tools/sqs/`): fast with large queues.
    Local,
}

impl Emulator {
    fn name(self) -> &'static str {
        match self {
            Self::Moto => "moto",
            Self::Local => "local",
        }
    }
}

/// An SQS emulator on a free loopback port, stopped when dropped.
pub struct SqsEmulator {
    pub endpoint: String,
    pub pid: u32,
    dir: PathBuf,
}

impl SqsEmulator {
    /// Starts `kind` with `scripts/sqs-emulator` of the repository at `root`
    /// (its tools installed: `scripts/install-tools`).
    pub fn start(root: &Path, kind: Emulator) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "sluicegate-sqs-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let out = Command::new(root.join("scripts/sqs-emulator"))
            .arg(kind.name())
            .arg(&dir)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()?;
        let pid = std::fs::read_to_string(dir.join(format!("{}.pid", kind.name())))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let endpoint = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match pid {
            Some(pid) if out.status.success() => Ok(Self { endpoint, pid, dir }),
            _ => {
                if let Some(pid) = pid {
                    kill(pid);
                }
                let _ = std::fs::remove_dir_all(&dir);
                Err(std::io::Error::other(format!(
                    "scripts/sqs-emulator {} did not start ({})",
                    kind.name(),
                    out.status
                )))
            }
        }
    }
}

fn kill(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).stderr(Stdio::null()).status();
}

impl Drop for SqsEmulator {
    fn drop(&mut self) {
        kill(self.pid);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
