//! CPU accounting from `/proc`: this process, the release binary under test,
//! every postgres process, the SQS emulator and the whole machine, in cores.

use std::time::Instant;

use crate::{machine::run_cmd, stats::row};

/// CPU time (in clock ticks) of the processes involved, and of the machine.
#[derive(Clone, Copy, Default)]
pub struct CpuSnap {
    own: u64,
    postgres: u64,
    emulator: u64,
    child: u64,
    machine_busy: u64,
    machine_total: u64,
}

/// CPU used over an interval, in cores (1.0 = one core busy all the time).
#[derive(Clone, Copy, Default, Debug)]
pub struct CpuUse {
    pub own: f64,
    pub postgres: f64,
    pub emulator: f64,
    pub child: f64,
    pub machine: f64,
}

pub struct CpuMeter {
    ticks_per_sec: f64,
    cores: f64,
    emulator_pid: Option<u32>,
}

fn proc_ticks(stat: &str) -> Option<u64> {
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn pid_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| proc_ticks(&s))
        .unwrap_or(0)
}

fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| s.contains("(postgres)"))
        .filter_map(|s| proc_ticks(&s))
        .sum()
}

impl CpuMeter {
    pub fn new(emulator_pid: Option<u32>) -> Self {
        let ticks_per_sec = run_cmd("getconf", &["CLK_TCK"])
            .and_then(|s| s.parse().ok())
            .unwrap_or(100.0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Self {
            ticks_per_sec,
            cores,
            emulator_pid,
        }
    }

    pub fn snap(&self, child: Option<u32>) -> (Instant, CpuSnap) {
        let (mut busy, mut total) = (0, 0);
        if let Ok(s) = std::fs::read_to_string("/proc/stat") {
            if let Some(line) = s.lines().next() {
                let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
                total = v.iter().take(8).sum();
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                busy = total - idle;
            }
        }
        let snap = CpuSnap {
            own: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| proc_ticks(&s))
                .unwrap_or(0),
            postgres: postgres_ticks(),
            emulator: self.emulator_pid.map_or(0, pid_ticks),
            child: child.map_or(0, pid_ticks),
            machine_busy: busy,
            machine_total: total,
        };
        (Instant::now(), snap)
    }

    pub fn since(&self, start: (Instant, CpuSnap), child: Option<u32>) -> CpuUse {
        let (t1, b) = self.snap(child);
        let (t0, a) = start;
        let secs = (t1 - t0).as_secs_f64().max(1e-9);
        let cores = |x: u64, y: u64| y.saturating_sub(x) as f64 / self.ticks_per_sec / secs;
        let machine_total = b.machine_total.saturating_sub(a.machine_total).max(1) as f64;
        CpuUse {
            own: cores(a.own, b.own),
            postgres: cores(a.postgres, b.postgres),
            emulator: if self.emulator_pid.is_some() {
                cores(a.emulator, b.emulator)
            } else {
                f64::NAN
            },
            child: cores(a.child, b.child),
            machine: b.machine_busy.saturating_sub(a.machine_busy) as f64 / machine_total * self.cores,
        }
    }
}

pub fn cpu_rows(out: &mut String, label: &str, uses: &[CpuUse], with_child: bool) {
    let pick = |f: fn(&CpuUse) -> f64| uses.iter().map(f).collect::<Vec<_>>();
    if with_child {
        row(
            out,
            &format!("{label}: sluicegate process, cores"),
            &pick(|c| c.child),
            2,
        );
        row(
            out,
            &format!("{label}: bench process (load + downstream), cores"),
            &pick(|c| c.own),
            2,
        );
    } else {
        row(
            out,
            &format!("{label}: bench process (service + load + downstream), cores"),
            &pick(|c| c.own),
            2,
        );
    }
    row(
        out,
        &format!("{label}: all postgres processes, cores"),
        &pick(|c| c.postgres),
        2,
    );
    row(
        out,
        &format!("{label}: SQS emulator (node), cores"),
        &pick(|c| c.emulator),
        2,
    );
    row(
        out,
        &format!("{label}: whole machine, cores busy"),
        &pick(|c| c.machine),
        2,
    );
}
