//! A throwaway Postgres cluster a test starts itself (initdb + pg_ctl from
//! the machine's Postgres 15 binaries, on a free loopback port, data in a
//! temporary directory, trust authentication), so that it can be stopped,
//! killed and restarted for real. The machine's own cluster (5432) is never
//! touched. initdb refuses to run as root: as root, every command runs as
//! the `postgres` user (`runuser`), in a directory that user owns.
#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Command, Output},
};

use uuid::Uuid;

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PgCluster {
    pub port: u16,
    pub dir: PathBuf,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs one of the Postgres binaries, as `postgres` when we are root.
fn run(program: &str, args: &[&str]) -> Output {
    let path = format!("{BIN}/{program}");
    let out = if is_root() {
        Command::new("runuser")
            .args(["-u", "postgres", "--", &path])
            .args(args)
            .output()
    } else {
        Command::new(&path).args(args).output()
    }
    .unwrap_or_else(|e| panic!("cannot run {path}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PgCluster {
    /// initdb and start a cluster (about two seconds). Blocking.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("sg-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap();
        if is_root() {
            let st = Command::new("chown").arg("postgres:").arg(&dir).status().unwrap();
            assert!(st.success(), "chown postgres {dir:?}");
        }
        let data = dir.join("data");
        run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let cluster = Self { port: free_port(), dir };
        cluster.start_server();
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").to_str().unwrap().to_owned()
    }

    /// Starts the server (after `stop_immediate`) and waits until it accepts
    /// connections.
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// Stops the server the way a crash does (`-m immediate`: no checkpoint,
    /// connections dropped; the next start runs crash recovery).
    pub fn stop_immediate(&self) {
        run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    /// `pg_ctl restart -m immediate`.
    pub fn restart_immediate(&self) {
        self.stop_immediate();
        self.start_server();
    }

    /// The URL of a database of this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let path = format!("{BIN}/pg_ctl");
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--", &path])
                .args(args)
                .output()
        } else {
            Command::new(&path).args(args).output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
