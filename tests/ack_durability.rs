//! An acknowledgement is on the disk, not in the page cache (issue 21): the
//! real `herald` binary under `strace -f -y`, and from the trace, no `201` or
//! `202` is written to a socket while a file of the data directory has a
//! write not yet followed by an `fsync`/`fdatasync` of that file, or the
//! directory has a created or renamed entry not yet followed by a sync of
//! the directory.
//!
//! The syscalls are read in the order strace reports them: a write counts as
//! covered only by a sync that began after the write returned, and an
//! acknowledgement is checked when its `writev` begins. The dispatcher is
//! held to one provider call an hour, spent (with its outcome recorded)
//! before the trace starts, so nothing but the acknowledged requests writes
//! while they are answered: a write of other work racing an answer would be
//! flagged, though no answer waits for it.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::child::HeraldProcess;
use common::{SETTLE_TIMEOUT, eventually};
use tempfile::TempDir;

const REQUESTS: usize = 20;
/// What the trace records: writes, syncs, and the calls that add entries.
const TRACED: &str = "trace=write,writev,pwrite64,pwritev,pwritev2,sendto,sendmsg,\
                      fsync,fdatasync,sync_file_range,openat,creat,rename,renameat,renameat2,\
                      mkdir,mkdirat,link,linkat";
/// Files of the data directory that hold no request: Herald's lock (its pid)
/// and its write probe at start.
const NOT_DATA: [&str; 2] = ["herald.lock", "herald.probe"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledgement_is_sent_before_the_data_files_are_synced() {
    let Some(strace) = common::require_command("strace", "apt-get install strace") else {
        return;
    };
    let dir = TempDir::new().unwrap();
    // No provider listens on port 1: the one call the rate limit lets through
    // fails at once, and its retry waits an hour for the limit.
    let herald = HeraldProcess::start(
        dir.path(),
        "http://127.0.0.1:1",
        &["--rate-limit", "1/3600s"],
    )
    .await;
    let client = reqwest::Client::new();
    herald.wait_ready(&client).await;

    // The one call the rate limit allows, and its outcome, before the trace.
    let first = herald.create(&client).await;
    assert_eq!(herald.process(&client, &first).await, 202);
    eventually(
        "the one call the rate limit allows has its outcome",
        async || {
            let kinds = herald.event_kinds(&client, &first).await;
            kinds.iter().any(|kind| kind == "attempt_finished")
        },
    )
    .await;

    let trace_dir = TempDir::new().unwrap();
    let trace_file = trace_dir.path().join("herald.strace");
    let tracer = Tracer::attach(&strace, herald.pid(), &trace_file).await;
    let mut ids = Vec::new();
    for _ in 0..REQUESTS {
        ids.push(herald.create(&client).await);
    }
    for id in &ids {
        assert_eq!(herald.process(&client, id).await, 202);
    }
    let trace = tracer.detach().await;
    herald.terminate().await;

    let report = check_trace(&trace, dir.path());
    assert!(
        report.acknowledgements >= 2 * REQUESTS,
        "the trace holds every acknowledgement ({} seen)",
        report.acknowledgements
    );
    assert!(report.log_writes > 0, "the trace holds sled's log writes");
    assert!(
        report.unsynced.is_empty(),
        "acknowledgements sent while data was not synced:\n{}",
        report.unsynced.join("\n")
    );
}

/// `strace -f -y -p PID`, writing its trace to a file.
struct Tracer {
    child: Child,
    file: PathBuf,
}

impl Tracer {
    /// Attaches to every thread of `pid` and waits until each is traced.
    async fn attach(strace: &Path, pid: u32, file: &Path) -> Self {
        let child = Command::new(strace)
            .args(["-f", "-qq", "-y", "-s", "48", "-e", TRACED])
            .arg("-o")
            .arg(file)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .expect("strace starts");
        let tracer = Self {
            child,
            file: file.to_path_buf(),
        };
        eventually("strace traces every thread of herald", async || {
            all_threads_traced(pid)
        })
        .await;
        tracer
    }

    /// Stops tracing (strace detaches on SIGINT) and returns the trace.
    async fn detach(mut self) -> String {
        // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(sent, 0, "SIGINT delivered to strace");
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        while self.child.try_wait().expect("strace's status").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "strace never detached"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::read_to_string(&self.file).expect("the trace")
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // Already reaped after a detach; a tracer's death detaches its tracees.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether every thread of `pid` has a tracer.
fn all_threads_traced(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        status
            .lines()
            .any(|line| line.starts_with("TracerPid:") && line.trim_end() != "TracerPid:\t0")
    })
}

/// What the trace showed.
#[derive(Debug, Default)]
struct Report {
    acknowledgements: usize,
    log_writes: usize,
    /// One line per acknowledgement sent with unsynced data: what was unsynced.
    unsynced: Vec<String>,
}

/// A syscall as strace reports it: its pid, name and arguments, and where in
/// the trace it began and returned.
struct Call {
    name: String,
    args: String,
    result: String,
    began: usize,
    returned: usize,
}

/// Writes not yet covered by a sync, by path: when each began and returned.
#[derive(Default)]
struct Dirty {
    writes: HashMap<String, Vec<(usize, usize)>>,
}

impl Dirty {
    fn wrote(&mut self, path: &str, call: &Call) {
        let writes = self.writes.entry(path.to_string()).or_default();
        writes.push((call.began, call.returned));
    }

    /// A sync of `path` covers the writes that returned before it began.
    fn synced(&mut self, path: &str, call: &Call) {
        if let Some(writes) = self.writes.get_mut(path) {
            writes.retain(|&(_, returned)| returned > call.began);
        }
    }

    /// The paths with a write that began before `at` and is not covered.
    fn before(&self, at: usize) -> Vec<String> {
        let mut paths: Vec<String> = (self.writes.iter())
            .filter(|(_, writes)| writes.iter().any(|&(began, _)| began < at))
            .map(|(path, _)| path.clone())
            .collect();
        paths.sort();
        paths
    }
}

fn check_trace(trace: &str, data_dir: &Path) -> Report {
    let data_dir = data_dir.to_string_lossy().to_string();
    let mut report = Report::default();
    let mut dirty = Dirty::default();
    for call in calls(trace) {
        let fd_path = fd_path(&call.args);
        let in_data = |path: &str| {
            path.starts_with(&format!("{data_dir}/"))
                && !NOT_DATA
                    .iter()
                    .any(|name| path.ends_with(&format!("/{name}")))
        };
        match call.name.as_str() {
            "write" | "pwrite64" | "pwritev" | "pwritev2" | "writev" | "sendto" | "sendmsg" => {
                if let Some(path) = fd_path.filter(|path| in_data(path)) {
                    report.log_writes += usize::from(path.ends_with("/db"));
                    dirty.wrote(path, &call);
                } else if is_acknowledgement(&call.args) {
                    report.acknowledgements += 1;
                    let unsynced = dirty.before(call.began);
                    if !unsynced.is_empty() {
                        report.unsynced.push(format!(
                            "trace line {}: {}\n{}",
                            call.began + 1,
                            unsynced.join(", "),
                            context(trace, call.began)
                        ));
                    }
                }
            }
            "fsync" | "fdatasync" if call.result.trim() == "0" => {
                if let Some(path) = fd_path {
                    dirty.synced(path, &call);
                }
            }
            _ => {
                // A call that adds or renames an entry dirties its directory.
                if let Some(entry) = new_entry(&call)
                    && in_data(&entry)
                    && let Some(parent) = Path::new(&entry).parent()
                {
                    dirty.wrote(&parent.to_string_lossy(), &call);
                }
            }
        }
    }
    report
}

/// The trace's lines up to `line`, for a failure's message.
fn context(trace: &str, line: usize) -> String {
    let lines: Vec<&str> = trace.lines().collect();
    lines[line.saturating_sub(12)..=line].join("\n")
}

/// The trace's calls in the order they began, with unfinished ones joined
/// to their `resumed` halves.
fn calls(trace: &str) -> Vec<Call> {
    let mut open: HashMap<&str, (String, String, usize)> = HashMap::new();
    let mut calls = Vec::new();
    for (index, line) in trace.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            if let Some((name_began, args, began)) = open.remove(pid)
                && name_began == name
            {
                let (more, result) = tail.rsplit_once(" = ").unwrap_or((tail, ""));
                calls.push(Call {
                    name: name_began,
                    args: (args + more).trim_end_matches(')').to_string(),
                    result: result.to_string(),
                    began,
                    returned: index,
                });
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue; // signals and exits
        };
        if let Some(args) = args.strip_suffix(" <unfinished ...>") {
            open.insert(pid, (name.to_string(), args.to_string(), index));
            continue;
        }
        let (args, result) = args.rsplit_once(" = ").unwrap_or((args, ""));
        calls.push(Call {
            name: name.to_string(),
            args: args.trim_end_matches(')').to_string(),
            result: result.to_string(),
            began: index,
            returned: index,
        });
    }
    calls.sort_by_key(|call| call.began);
    calls
}

/// The path strace's `-y` shows for a call's first argument: `11</dir/db>`.
fn fd_path(args: &str) -> Option<&str> {
    let first = args.split(", ").next()?;
    let (_, path) = first.split_once('<')?;
    path.strip_suffix('>')
}

/// The entry a call creates or renames into place: the path of the file
/// `openat(…O_CREAT…)` returned, or the last quoted path of a rename, link
/// or mkdir (resolved against its directory descriptor when relative).
fn new_entry(call: &Call) -> Option<String> {
    match call.name.as_str() {
        "openat" | "creat" if call.args.contains("O_CREAT") || call.name == "creat" => {
            let (_, path) = call.result.split_once('<')?;
            Some(path.trim_end_matches('>').to_string())
        }
        "rename" | "renameat" | "renameat2" | "mkdir" | "mkdirat" | "link" | "linkat" => {
            let quoted: Vec<&str> = call.args.split('"').skip(1).step_by(2).collect();
            let target = match call.name.as_str() {
                "mkdir" | "mkdirat" => quoted.first()?,
                _ => quoted.last()?,
            };
            if target.starts_with('/') {
                return Some(target.to_string());
            }
            let dir_fd = call.args.split(", ").nth(match call.name.as_str() {
                "mkdirat" => 0,
                "renameat" | "renameat2" | "linkat" => 2,
                _ => return None,
            })?;
            let (_, dir) = dir_fd.split_once('<')?;
            Some(format!("{}/{target}", dir.trim_end_matches('>')))
        }
        _ => None,
    }
}

/// A socket write that begins a `201` or `202` answer.
fn is_acknowledgement(args: &str) -> bool {
    args.contains("socket:[")
        && (args.contains("\"HTTP/1.1 201 ") || args.contains("\"HTTP/1.1 202 "))
}

#[test]
fn the_checker_finds_an_answer_sent_before_its_log_was_synced() {
    // The order traced on the code before issue 21: sled's sync_file_range,
    // the integrity record's fdatasync, the answer; sled's fsync comes later.
    let trace = "\
1 pwrite64(11</d/db>, \"x\", 29, 0) = 29
1 sync_file_range(11</d/db>, 0, 29, SYNC_FILE_RANGE_WRITE) = 0
1 fdatasync(12</d/herald.integrity>) = 0
2 writev(14<socket:[1]>, [{iov_base=\"HTTP/1.1 201 Created\\r\\n\"}], 1) = 219
3 fsync(11</d/db>) = 0
";
    let report = check_trace(trace, Path::new("/d"));
    assert_eq!(report.acknowledgements, 1);
    assert_eq!(report.unsynced.len(), 1, "{report:?}");
    assert!(report.unsynced[0].contains("/d/db"));

    // A sync that began before the write returned does not cover it; one
    // that began after does, and a renamed snapshot needs its directory synced.
    let trace = "\
1 pwrite64(11</d/db>, \"x\", 29, 0 <unfinished ...>
2 fdatasync(11</d/db>) = 0
1 <... pwrite64 resumed>) = 29
3 writev(14<socket:[1]>, [{iov_base=\"HTTP/1.1 202 Accepted\\r\\n\"}], 1) = 219
2 fdatasync(11</d/db>) = 0
1 rename(\"/d/snap.1.generating\", \"/d/snap.1\") = 0
3 writev(14<socket:[1]>, [{iov_base=\"HTTP/1.1 201 Created\\r\\n\"}], 1) = 219
2 fsync(9</d>) = 0
3 writev(14<socket:[1]>, [{iov_base=\"HTTP/1.1 201 Created\\r\\n\"}], 1) = 219
";
    let report = check_trace(trace, Path::new("/d"));
    assert_eq!(report.acknowledgements, 3);
    assert_eq!(report.unsynced.len(), 2, "{report:?}");
    assert!(report.unsynced[0].contains("/d/db"));
    assert!(report.unsynced[1].contains(": /d\n"), "{report:?}");
}
