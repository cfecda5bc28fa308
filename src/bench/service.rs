//! The service under test: `wss serve` as a child process of the bench (this very executable),
//! so that its memory and CPU time are its own and can be read from `/proc/<pid>/`.
//!
//! It runs with the settings file the bench validated (`--config`), under environment variables
//! that only place it: a Redis URL, a key prefix of its own, the control plane on
//! `127.0.0.1:0` (the address is read from its `control plane listening on` log line), a
//! consumer name, and `WSS_ALLOW_PRIVATE_TARGETS` / `WSS_ALLOW_HTTP`, since the receivers are
//! `http://127.0.0.1`. Inherited `WSS_*` variables are removed so that the defaults are what is
//! measured. Its stderr is drained on a thread (the last lines are kept for error messages).
//! Dropping it kills it.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use crossbeam_channel::RecvTimeoutError;
use parking_lot::Mutex;

/// stderr lines kept for an error message.
const KEPT_LINES: usize = 40;
/// `USER_HZ`: the unit of CPU times in `/proc/<pid>/stat`, 100 on every Linux ABI.
const TICKS_PER_SEC: f64 = 100.0;

pub struct Service {
    child: Child,
    wrapped: bool,
    pub grpc: SocketAddr,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Service {
    /// Starts `wss serve` and waits until its control plane listens and its pipeline reads.
    /// `wrap` (a profiler, say) runs the service when not empty.
    pub fn start(
        wrap: &[String],
        settings: &Path,
        redis_url: &str,
        prefix: &str,
        consumer: &str,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut cmd = this_executable(wrap, "wss serve")?;
        cmd.arg("serve").arg("--config").arg(settings).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WSS_") || name == "RUST_LOG" {
                cmd.env_remove(&name);
            }
        }
        cmd.env("WSS_REDIS_URL", redis_url)
            .env("WSS_KEY_PREFIX", prefix)
            .env("WSS_GRPC_ADDR", "127.0.0.1:0")
            .env("WSS_METRICS_ADDR", "127.0.0.1:0")
            .env("WSS_CONSUMER", consumer)
            .env("WSS_ALLOW_PRIVATE_TARGETS", "true")
            .env("WSS_ALLOW_HTTP", "true");
        for (name, value) in extra {
            cmd.env(name, value);
        }
        let mut child = cmd.spawn().context("starting `wss serve`")?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (lines_tx, lines_rx) = crossbeam_channel::unbounded::<String>();
        let kept = tail.clone();
        thread::Builder::new().name("bench-service-log".into()).spawn(move || {
            let mut ready = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !ready {
                    ready = line.contains("as consumer");
                    let _ = lines_tx.send(line.clone());
                }
                let mut kept = kept.lock();
                if kept.len() == KEPT_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        })?;
        let mut service = Self { child, wrapped: !wrap.is_empty(), grpc: SocketAddr::from(([127, 0, 0, 1], 0)), tail };
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut grpc = None;
        loop {
            match lines_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    const MARK: &str = "control plane listening on ";
                    if let Some(at) = line.find(MARK) {
                        let addr = line[at + MARK.len()..].split_whitespace().next().unwrap_or_default();
                        grpc = Some(addr.parse::<SocketAddr>().with_context(|| format!("reading the gRPC address from {line:?}"))?);
                    }
                    if line.contains("as consumer") {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!("`wss serve` did not start within 120 s; its last lines:\n{}", service.tail()),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = service.child.wait().ok();
                    bail!("`wss serve` exited ({status:?}) before it was ready; its last lines:\n{}", service.tail())
                }
            }
        }
        service.grpc = grpc.context("the service never logged `control plane listening on <address>`")?;
        Ok(service)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines it logged.
    pub fn tail(&self) -> String {
        joined(&self.tail)
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("`wss serve` exited ({status}); its last lines:\n{}", self.tail());
        }
        Ok(())
    }

    /// Resident memory now (`VmRSS`), MiB.
    pub fn rss_mib(&self) -> anyhow::Result<f64> {
        status_kib(self.pid(), "VmRSS:").map(|kib| kib / 1024.0)
    }

    /// The most resident memory so far (`VmHWM`), MiB.
    pub fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        status_kib(self.pid(), "VmHWM:").map(|kib| kib / 1024.0)
    }

    /// CPU time used so far (user + system), seconds.
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        cpu_secs(self.pid())
    }

    /// Context switches of all its threads so far (voluntary ones are mostly a thread going to
    /// sleep on a channel or a socket: each costs a wake-up later).
    pub fn context_switches(&self) -> u64 {
        context_switches(self.pid())
    }

    /// Waits until the process has been (almost) idle for `quiet`: used where the bench cannot
    /// see from outside when the service has finished its work (writing a million history
    /// records, say).
    pub fn wait_idle(&self, quiet: Duration, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let before = self.cpu_secs()?;
            thread::sleep(quiet);
            let used = self.cpu_secs()? - before;
            if used <= quiet.as_secs_f64() * 0.05 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the service was still busy after {within:?}");
            }
        }
    }
}

/// Lines kept, one text.
fn joined(lines: &Mutex<VecDeque<String>>) -> String {
    lines.lock().iter().cloned().collect::<Vec<_>>().join("\n")
}

impl Drop for Service {
    fn drop(&mut self) {
        let tail = &self.tail;
        end_child(&mut self.child, self.wrapped, || {
            eprintln!("bench: the wrapped service did not exit within 5 minutes of SIGINT; killing it. Its last lines:\n{}", joined(tail));
        });
    }
}

/// Ends a child process the bench started (the service, the bare pipeline): a wrapper (a
/// profiler) gets SIGINT first and up to 5 minutes to write its output (`overdue` is called
/// when it has not exited by then); then the child is killed.
pub(super) fn end_child(child: &mut Child, wrapped: bool, overdue: impl FnOnce()) {
    if wrapped {
        let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(100));
        }
        if matches!(child.try_wait(), Ok(None)) {
            overdue();
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A `Vm…:` line of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib = line[field.len()..].trim().trim_end_matches("kB").trim();
    kib.parse().with_context(|| format!("reading {line:?}"))
}

/// User + system CPU time of a process (`/proc/<pid>/stat` fields 14 and 15), seconds.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    cpu_split(pid).map(|(user, system)| user + system)
}

/// User and system CPU time of a process, seconds.
pub fn cpu_split(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let rest = &stat[stat.rfind(')').context("malformed /proc/<pid>/stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    Ok((ticks(11) / TICKS_PER_SEC, ticks(12) / TICKS_PER_SEC))
}

/// Context switches of all the threads of process `pid` so far (voluntary ones are mostly a
/// thread going to sleep on a channel or a socket: each costs a wake-up later).
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
                .collect::<Vec<_>>()
        })
        .sum()
}

/// A command that runs this very executable (for `what`, a subcommand it is about to be given),
/// under `wrap` (a profiler, say) when not empty. `/proc/self/exe` rather than its path: the very
/// binary running, even when a build has replaced the file meanwhile. (A wrapper needs the path:
/// for it, /proc/self is itself.)
pub(super) fn this_executable(wrap: &[String], what: &str) -> anyhow::Result<Command> {
    let exe = match Path::new("/proc/self/exe").exists() && wrap.is_empty() {
        true => PathBuf::from("/proc/self/exe"),
        false => std::env::current_exe().with_context(|| format!("finding this executable to start `{what}`"))?,
    };
    Ok(match wrap.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(exe);
            cmd
        }
        None => Command::new(exe),
    })
}
