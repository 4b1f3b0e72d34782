//! Storage faults against the real binary: a disk that fills up under load,
//! a start on a full, read-only or forbidden disk, bytes flipped in and
//! files cut from a stopped store, a data directory deleted under a running
//! gateway, a second instance. The promise under test: a `201`/`202` is
//! never lost, and never hidden; a write that cannot be made durable is a
//! `503` with `Retry-After`, never a `500`.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::child::HeraldProcess;
use common::tmpfs::Tmpfs;
use common::{eventually, reserved_port};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::Mutex;

/// Creates this many requests at most while filling a disk (a 4 MiB tmpfs
/// fills after about two thousand).
const FILL_LIMIT: usize = 50_000;

fn body() -> Value {
    // Large bodies fill the disk sooner.
    json!({"to": "user@example.com", "message": "m".repeat(2_000), "type": "email"})
}

/// What a burst of concurrent creates got back.
#[derive(Default)]
struct Answers {
    accepted: Vec<String>,
    refused: usize,
    other: Vec<(u16, Value)>,
}

/// Creates from `clients` tasks at once until the disk refuses (`503`) or
/// [`FILL_LIMIT`] creates were made.
async fn create_until_refused(herald: &HeraldProcess, clients: usize) -> Answers {
    let answers = Arc::new(Mutex::new(Answers::default()));
    let refused = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (answers, refused, client) = (answers.clone(), refused.clone(), client.clone());
            let url = format!("{}/v1/requests", herald.address);
            tokio::spawn(async move {
                for _ in 0..FILL_LIMIT / clients {
                    if refused.load(Ordering::Relaxed) {
                        return;
                    }
                    let response = client.post(&url).json(&body()).send().await.unwrap();
                    let status = response.status().as_u16();
                    let retry_after = response.headers().get("retry-after").cloned();
                    let answer: Value = response.json().await.unwrap();
                    let mut answers = answers.lock().await;
                    match status {
                        201 => answers
                            .accepted
                            .push(answer["id"].as_str().unwrap().to_string()),
                        503 if retry_after.is_some()
                            && answer["error"]["code"] == "storage_unavailable" =>
                        {
                            answers.refused += 1;
                            refused.store(true, Ordering::Relaxed);
                        }
                        _ => answers.other.push((status, answer)),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(answers).ok().unwrap().into_inner()
}

async fn get(client: &reqwest::Client, herald: &HeraldProcess, path: &str) -> (u16, Value) {
    let response = client
        .get(format!("{}{path}", herald.address))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every id answers `200` on `GET`.
async fn assert_all_present(herald: &HeraldProcess, ids: &[String]) {
    let client = reqwest::Client::new();
    for id in ids {
        let (status, _) = get(&client, herald, &format!("/v1/requests/{id}")).await;
        assert_eq!(status, 200, "acknowledged request {id} is missing");
    }
}

/// A provider URL nothing answers: these tests are about the store.
fn no_provider() -> (tokio::net::TcpSocket, String) {
    let port = reserved_port();
    let url = format!("http://{}", port.local_addr().unwrap());
    (port, url)
}

#[tokio::test]
async fn a_full_disk_answers_503_then_takes_writes_again_without_a_restart() {
    let Some(disk) = Tmpfs::mount(4 * 1024) else {
        return;
    };
    let (_port, provider) = no_provider();
    let client = reqwest::Client::new();
    let herald = HeraldProcess::start(disk.data_dir(), &provider, &[]).await;

    let answers = create_until_refused(&herald, 16).await;
    assert!(
        answers.other.is_empty(),
        "only 201 or 503: {:?}",
        &answers.other[..1]
    );
    assert!(answers.refused > 0, "the disk never filled");
    let (status, ready) = get(&client, &herald, "/ready").await;
    assert_eq!(
        (status, &ready["error"]["component"]),
        (503, &json!("storage"))
    );
    assert_eq!(get(&client, &herald, "/health").await.0, 200);

    disk.resize(64 * 1024);
    let mut accepted = answers.accepted;
    eventually(
        "a create is accepted again once the disk has room",
        async || {
            let response = client
                .post(format!("{}/v1/requests", herald.address))
                .json(&body())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            assert!(status == 201 || status == 503, "answered {status}");
            if status == 201 {
                let answer: Value = response.json().await.unwrap();
                accepted.push(answer["id"].as_str().unwrap().to_string());
            }
            status == 201
        },
    )
    .await;
    assert_eq!(get(&client, &herald, "/ready").await.0, 200);
    assert!(herald.terminate().await.success(), "a clean stop exits 0");

    let herald = HeraldProcess::start(disk.data_dir(), &provider, &[]).await;
    assert_all_present(&herald, &accepted).await;
}

#[tokio::test]
async fn an_outcome_the_full_disk_held_up_is_recorded_later_and_not_sent_twice() {
    let Some(disk) = Tmpfs::mount(8 * 1024) else {
        return;
    };
    // Slow enough that the disk fills while the call is in flight.
    let provider = common::spawn_provider_with_latency(1_500, 1_500).await;
    let client = reqwest::Client::new();
    let herald = HeraldProcess::start(disk.data_dir(), &provider.url(), &[]).await;
    let id = herald.create(&client).await;
    assert_eq!(herald.process(&client, &id).await, 202);
    eventually("the provider call is in flight", async || {
        provider.simulator.calls_in_progress() > 0
    })
    .await;
    let filler = disk.fill();
    eventually("the store stops taking writes", async || {
        let response = client
            .post(format!("{}/v1/requests", herald.address))
            .json(&body())
            .send()
            .await
            .unwrap();
        response.status() == 503
    })
    .await;
    eventually("the provider answered while the disk is full", async || {
        provider.simulator.calls_in_progress() == 0 && !provider.simulator.calls_of(&id).is_empty()
    })
    .await;
    let (status, _) = get(&client, &herald, &format!("/v1/requests/{id}")).await;
    assert_eq!(
        status, 503,
        "the store is still refusing: the outcome waits"
    );
    std::fs::remove_file(filler).unwrap();
    eventually(
        "the outcome is recorded once the disk has room",
        async || herald.request(&client, &id).await["status"] == "sent",
    )
    .await;
    assert_eq!(
        provider.simulator.calls_of(&id).len(),
        1,
        "sent once, recorded once"
    );
    assert!(herald.terminate().await.success());
}

#[tokio::test]
async fn a_start_on_a_full_disk_fails_plainly_and_a_start_with_room_is_normal() {
    let Some(disk) = Tmpfs::mount(4 * 1024) else {
        return;
    };
    let (_port, provider) = no_provider();
    let client = reqwest::Client::new();
    let herald = HeraldProcess::start(disk.data_dir(), &provider, &[]).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(herald.create(&client).await);
    }
    assert!(herald.terminate().await.success());

    let filler = disk.fill();
    let refused = HeraldProcess::try_start(disk.data_dir(), &provider, &[]).await;
    let refused = refused.err().expect("no start on a full disk");
    assert!(!refused.status.success());
    let line = &refused.last_line;
    assert!(line.contains("no space left"), "{line}");
    assert!(
        line.contains(&disk.data_dir().display().to_string()),
        "names the path: {line}"
    );

    std::fs::remove_file(filler).unwrap();
    // What a start on a full disk can leave behind, and sled would read as data.
    std::fs::write(
        disk.data_dir().join("snap.0000000000000000.generating"),
        b"",
    )
    .unwrap();
    let herald = HeraldProcess::start(disk.data_dir(), &provider, &[]).await;
    assert_all_present(&herald, &ids).await;
}

#[tokio::test]
async fn a_read_only_or_forbidden_directory_fails_plainly() {
    let (_port, provider) = no_provider();
    if let Some(disk) = Tmpfs::mount(1024) {
        std::fs::create_dir(disk.data_dir()).unwrap();
        disk.make_read_only();
        let refused = HeraldProcess::try_start(disk.data_dir(), &provider, &[]).await;
        let line = refused
            .err()
            .expect("no start on a read-only disk")
            .last_line;
        assert!(line.contains("read-only"), "{line}");
    }

    // A directory another user owns, for a Herald without root's power to ignore that.
    let parent = TempDir::new().unwrap();
    let theirs = parent.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let output = Command::new("setpriv")
        .args(["--bounding-set=-all", "--"])
        .arg(env!("CARGO_BIN_EXE_herald"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--provider-url",
            &provider,
        ])
        .arg("--data-dir")
        .arg(theirs.join("data"))
        .output();
    match output {
        Ok(output) if output.status.code() == Some(1) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains("permission denied"), "{stderr}");
        }
        other => common::missing(
            &format!("setpriv running herald as another user ({other:?})"),
            "apt-get install util-linux, and run the tests as root",
        ),
    }
}

/// A stopped store of 60 requests, every other one processed: its
/// directory, the ids, and which of them were processed.
async fn a_stopped_store(killed: bool, provider: &str) -> (TempDir, Vec<String>, HashSet<String>) {
    let dir = TempDir::new().unwrap();
    let client = reqwest::Client::new();
    let mut herald = HeraldProcess::start(&dir, provider, &[]).await;
    let (mut ids, mut processed) = (Vec::new(), HashSet::new());
    for i in 0..60 {
        let id = herald.create(&client).await;
        if i % 2 == 0 {
            assert_eq!(herald.process(&client, &id).await, 202);
            processed.insert(id.clone());
        }
        ids.push(id);
    }
    if killed {
        herald.kill();
    } else {
        assert!(herald.terminate().await.success());
    }
    (dir, ids, processed)
}

/// The damage to try on one file: a byte flipped at each offset, then the file cut in half.
#[derive(Clone, Copy, Debug)]
enum Damage {
    Flip(u64),
    Truncate,
}

fn damage(file: &Path, damage: Damage) {
    use std::os::unix::fs::FileExt;
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let len = handle.metadata().unwrap().len();
    match damage {
        Damage::Flip(offset) => {
            let mut byte = [0u8];
            handle
                .read_exact_at(&mut byte, offset.min(len - 1))
                .unwrap();
            byte[0] ^= 0x10;
            handle.write_all_at(&byte, offset.min(len - 1)).unwrap();
        }
        Damage::Truncate => handle.set_len(len / 2).unwrap(),
    }
}

fn damages_for(file: &Path) -> Vec<Damage> {
    let len = std::fs::metadata(file).unwrap().len();
    let mut offsets = vec![0, 20, 600, len / 8, len / 4, len / 2, 3 * len / 4, len - 1];
    offsets.retain(|&offset| offset < len);
    offsets.dedup();
    let mut damages: Vec<_> = offsets.into_iter().map(Damage::Flip).collect();
    damages.push(Damage::Truncate);
    damages
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Starts Herald on a damaged copy: it must refuse, or start with every
/// acknowledged request and every acknowledged `process`. Returns whether it refused.
async fn refuses_or_starts_whole(
    dir: &Path,
    provider: &str,
    ids: &[String],
    processed: &HashSet<String>,
    what: &str,
) -> bool {
    let herald = match HeraldProcess::try_start(dir, provider, &[]).await {
        Err(refused) => {
            assert!(
                !refused.status.success(),
                "{what}: a refusal exits non-zero"
            );
            assert!(
                refused.last_line.starts_with("herald: "),
                "{what}: {}",
                refused.last_line
            );
            return true;
        }
        Ok(herald) => herald,
    };
    let client = reqwest::Client::new();
    for id in ids {
        let (status, _) = get(&client, &herald, &format!("/v1/requests/{id}")).await;
        assert_eq!(
            status, 200,
            "{what}: started without acknowledged request {id}"
        );
        if processed.contains(id) {
            let (_, history) = get(&client, &herald, &format!("/v1/requests/{id}/events")).await;
            let requested = history["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["event"] == "process_requested");
            assert!(
                requested,
                "{what}: started without the acknowledged process of {id}"
            );
        }
    }
    drop(herald);
    false
}

#[tokio::test]
async fn damaged_files_never_start_silently_with_fewer_requests() {
    let (_port, provider) = no_provider();
    for killed in [false, true] {
        let (store, ids, processed) = a_stopped_store(killed, &provider).await;
        let mut files: Vec<PathBuf> = std::fs::read_dir(store.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.is_file())
            .filter(|path| !path.ends_with("herald.lock"))
            .collect();
        files.sort();
        let (mut refused, mut started) = (0, 0);
        for file in &files {
            for damage_done in damages_for(file) {
                let copy = TempDir::new().unwrap();
                copy_dir(store.path(), copy.path());
                damage(&copy.path().join(file.file_name().unwrap()), damage_done);
                let what = format!("{damage_done:?} of {} (killed: {killed})", file.display());
                if refuses_or_starts_whole(copy.path(), &provider, &ids, &processed, &what).await {
                    refused += 1;
                } else {
                    started += 1;
                }
            }
        }
        eprintln!("killed: {killed}: {refused} damaged copies refused, {started} started whole");
        assert!(refused > 0, "some damage must be noticed");
    }
}

#[tokio::test]
async fn a_deleted_data_directory_refuses_writes_and_exits_non_zero() {
    let (_port, provider) = no_provider();
    let parent = TempDir::new().unwrap();
    let data = parent.path().join("data");
    let client = reqwest::Client::new();
    let herald = HeraldProcess::start(&data, &provider, &[]).await;
    herald.create(&client).await;
    std::fs::remove_dir_all(&data).unwrap();

    let response = client
        .post(format!("{}/v1/requests", herald.address))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let (status, ready) = get(&client, &herald, "/ready").await;
    assert_eq!(
        (status, &ready["error"]["component"]),
        (503, &json!("storage"))
    );
    assert!(
        !herald.terminate().await.success(),
        "the lost store is an error at exit"
    );
}

#[tokio::test]
async fn a_second_instance_and_a_foreign_directory_are_refused_plainly() {
    let (_port, provider) = no_provider();
    let dir = TempDir::new().unwrap();
    let first = HeraldProcess::start(&dir, &provider, &[]).await;
    let second = HeraldProcess::try_start(&dir, &provider, &[]).await;
    let line = second
        .err()
        .expect("a second instance is refused")
        .last_line;
    assert!(line.contains("another herald"), "{line}");
    drop(first);

    let foreign = TempDir::new().unwrap();
    std::fs::write(foreign.path().join("thesis.tex"), "mine").unwrap();
    let refused = HeraldProcess::try_start(&foreign, &provider, &[]).await;
    let line = refused
        .err()
        .expect("a foreign directory is refused")
        .last_line;
    assert!(line.contains("not a Herald data directory"), "{line}");
}

/// Runs `herald check` or `herald export` on `dir`; the exit code and standard output.
fn inspect(command: &str, dir: &Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg(command)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("herald runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    (output.status.code().unwrap_or(-1), stdout)
}

#[tokio::test]
async fn check_reports_sound_damaged_and_missing_stores_and_export_round_trips() {
    let (_port, provider) = no_provider();
    let (store, ids, _) = a_stopped_store(false, &provider).await;
    let (code, report) = inspect("check", store.path());
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("requests: 60") && report.contains("verdict: sound"),
        "{report}"
    );

    // What the running gateway answers for each request, to compare the export with.
    let client = reqwest::Client::new();
    let herald = HeraldProcess::start(&store, &provider, &["--max-in-flight", "1"]).await;
    let (code, exported) = inspect("export", store.path());
    assert_ne!(code, 0, "an export of a running store is refused");
    assert!(exported.is_empty());
    let mut answered = Vec::new();
    for id in &ids {
        answered.push(get(&client, &herald, &format!("/v1/requests/{id}")).await.1);
    }
    assert!(herald.terminate().await.success());
    let (code, exported) = inspect("export", store.path());
    assert_eq!(code, 0);
    let lines: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), ids.len());
    for (line, answer) in lines.iter().zip(&answered) {
        assert_eq!(line["request"]["id"], answer["id"]);
        assert_eq!(line["request"]["notification"]["to"], "user@example.com");
        assert!(!line["events"].as_array().unwrap().is_empty());
    }

    let damaged = TempDir::new().unwrap();
    copy_dir(store.path(), damaged.path());
    damage(&damaged.path().join("db"), Damage::Flip(600));
    let (code, report) = inspect("check", damaged.path());
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("verdict: NOT sound"), "{report}");

    let (code, _) = inspect("check", &store.path().join("no-such-dir"));
    assert_eq!(code, 1);
}

#[tokio::test]
async fn accepting_a_loss_is_explicit_counted_and_remembered() {
    let (_port, provider) = no_provider();
    let (store, _, _) = a_stopped_store(false, &provider).await;
    damage(&store.path().join("db"), Damage::Flip(600));
    let refused = HeraldProcess::try_start(&store, &provider, &[]).await;
    let line = refused.err().expect("a loss refuses the start").last_line;
    assert!(line.contains("acknowledged requests are missing"), "{line}");
    assert!(
        line.contains("--accept-data-loss"),
        "names the way out: {line}"
    );

    let client = reqwest::Client::new();
    let herald = HeraldProcess::start(&store, &provider, &["--accept-data-loss"]).await;
    let metrics = client
        .get(format!("{}/metrics", herald.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("herald_data_loss_accepted_total 1"),
        "{metrics}"
    );
    assert!(herald.terminate().await.success());

    let (code, report) = inspect("check", store.path());
    assert_eq!(code, 0, "what is left is the truth now: {report}");
    assert!(report.contains("1 accepted losses"), "{report}");
    let herald = HeraldProcess::start(&store, &provider, &[]).await;
    let (status, ready) = get(&client, &herald, "/ready").await;
    assert_eq!(status, 200, "later starts need no flag: {ready}");
}
