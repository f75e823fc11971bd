//! A client generated from `openapi/openapi.json` by an independent generator
//! (openapi-python-client, from PyPI) drives a whole job lifecycle against
//! the real server: the document is usable, not just valid.
//! The script is tools/client-test/lifecycle.py.

use std::{path::PathBuf, process::Output, time::Duration};

use tokio::process::Command;

use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const INSTALL_HINT: &str = "openapi-python-client is not installed for python3: run the tests with scripts/test (it installs the tool into .venv and puts .venv/bin first on PATH)";

fn report(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn run(what: &str, cmd: &mut Command, timeout: Duration) -> Output {
    cmd.kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{what}: cannot start: {e}"),
        Err(_) => panic!("{what}: did not finish within {timeout:?}"),
    }
}

/// A directory of its own under the system's temporary directory, removed
/// when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sluicegate-client-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn generated_python_client_drives_a_job_lifecycle() {
    // The generator must be there: a missing tool fails, it does not skip.
    let version = Command::new("python3")
        .args(["-m", "openapi_python_client", "--version"])
        .output()
        .await;
    match &version {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{INSTALL_HINT}\n{}",
            report("python3 -m openapi_python_client --version", out)
        ),
        Err(e) => panic!("{INSTALL_HINT} (cannot run python3: {e})"),
    }

    let tmp = TempDir::new();
    let client_dir = tmp.0.join("client");
    let out = run(
        "openapi-python-client generate",
        Command::new("python3")
            .args(["-m", "openapi_python_client", "generate", "--path"])
            .arg(format!("{ROOT}/openapi/openapi.json"))
            .arg("--output-path")
            .arg(&client_dir)
            .arg("--overwrite")
            .current_dir(&tmp.0),
        Duration::from_secs(120),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        report("openapi-python-client generate", &out)
    );
    let combined = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !combined.contains("Warning") && !combined.contains("Error"),
        "the generator had trouble with the document:\n{combined}"
    );
    assert!(
        client_dir.join("sluicegate_client").is_dir(),
        "no package in {client_dir:?}"
    );

    let port = free_port();
    let app = app().downstream(&format!("http://127.0.0.1:{port}/")).spawn().await;
    let out = run(
        "tools/client-test/lifecycle.py",
        Command::new("python3")
            .arg(format!("{ROOT}/tools/client-test/lifecycle.py"))
            .args(["--base-url", &app.base])
            .args(["--api-token", API_TOKEN])
            .args(["--drain-token", DRAIN_TOKEN])
            .args(["--downstream-port", &port.to_string()])
            .arg("--client-path")
            .arg(&client_dir)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        Duration::from_secs(120),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        report("the generated client's lifecycle", &out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("lifecycle: all checks passed"),
        "{}",
        report("the generated client's lifecycle", &out)
    );
}
