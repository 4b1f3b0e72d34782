//! The deployment files (Dockerfile, .dockerignore, docker-compose.yml,
//! deploy/) make promises that no test here can run: there is no Docker engine.
//! These tests parse them and check each promise, and that the files agree with
//! each other and with the code: environment variable names, metric names
//! (docs/metrics.md), ports, paths, and the commands the image runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

// ---------------------------------------------------------------------------
// Reading the files
// ---------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"));
    assert_eq!(
        docs.len(),
        1,
        "{path} should hold exactly one YAML document"
    );
    docs.remove(0)
}

/// A YAML scalar as the string Compose would see.
fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn text(value: &Yaml, what: &str) -> String {
    scalar(value).unwrap_or_else(|| panic!("{what} should be a string, found {value:?}"))
}

fn strings(value: &Yaml, what: &str) -> Vec<String> {
    match value {
        Yaml::Array(items) => items.iter().map(|item| text(item, what)).collect(),
        Yaml::BadValue | Yaml::Null => Vec::new(),
        other => panic!("{what} should be a list, found {other:?}"),
    }
}

fn compose() -> Yaml {
    yaml("docker-compose.yml")
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let service = &compose["services"][name];
    assert!(
        service.as_hash().is_some(),
        "docker-compose.yml has no service `{name}`"
    );
    service
}

/// `environment:` as a map, whether written as a map or as `KEY=value` items.
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Hash(map) => map
            .iter()
            .map(|(k, v)| (text(k, "env name"), scalar(v).unwrap_or_default()))
            .collect(),
        Yaml::Array(items) => items
            .iter()
            .map(|item| {
                let item = text(item, "env item");
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Yaml::BadValue => BTreeMap::new(),
        other => panic!("environment should be a map or a list, found {other:?}"),
    }
}

/// The value Compose uses when the variable is not set: `${NAME:-default}` → `default`.
fn default_value(value: &str) -> String {
    match value
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
    {
        Some(inner) => match inner.split_once(":-").or_else(|| inner.split_once('-')) {
            Some((_, default)) => default.to_string(),
            None => String::new(),
        },
        None => value.to_string(),
    }
}

fn env_default(service: &Yaml, name: &str) -> String {
    let env = environment(service);
    let value = env
        .get(name)
        .unwrap_or_else(|| panic!("environment has no {name}: {env:?}"));
    default_value(value)
}

/// `command:` as words, whether a string or a list.
fn command_words(service: &Yaml) -> Vec<String> {
    match &service["command"] {
        Yaml::String(s) => s.split_whitespace().map(String::from).collect(),
        other => strings(other, "command"),
    }
}

fn depends_on(service: &Yaml) -> Vec<String> {
    match &service["depends_on"] {
        Yaml::Hash(map) => map.keys().map(|k| text(k, "depends_on")).collect(),
        other => strings(other, "depends_on"),
    }
}

/// Short-syntax volumes as (source, target).
fn volumes(service: &Yaml) -> Vec<(String, String)> {
    strings(&service["volumes"], "volumes")
        .iter()
        .map(|v| {
            let mut parts = v.split(':');
            let source = parts.next().unwrap_or_default().to_string();
            let target = parts
                .next()
                .unwrap_or_else(|| panic!("volume `{v}` has no target"));
            (source, target.to_string())
        })
        .collect()
}

fn volume_source_for<'a>(mounts: &'a [(String, String)], target: &str) -> Option<&'a str> {
    mounts
        .iter()
        .find(|(_, t)| t == target)
        .map(|(s, _)| s.as_str())
}

/// A Compose duration (`30s`, `1m30s`, `500ms`) in milliseconds.
fn duration_ms(value: &str) -> u64 {
    let mut total = 0;
    let mut rest = value.trim();
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("bad duration `{value}`"));
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            unit => panic!("unknown unit `{unit}` in duration `{value}`"),
        };
        total += number * factor;
        rest = &rest[unit_len..];
    }
    total
}

/// Every `env = "NAME"` declared by a clap argument anywhere in src/.
fn env_vars_herald_reads() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in files_under(&repo().join("src")) {
        let source = fs::read_to_string(&file).unwrap_or_default();
        for piece in source.split("env = \"").skip(1) {
            if let Some((name, _)) = piece.split_once('"') {
                names.insert(name.to_string());
            }
        }
    }
    names
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir:?}: {e}")) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// Instructions with continuation lines joined and comments dropped, as Docker reads them.
fn dockerfile() -> Vec<Instruction> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                let (keyword, args) = pending
                    .split_once(char::is_whitespace)
                    .unwrap_or((&pending, ""));
                instructions.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.split_whitespace().collect::<Vec<_>>().join(" "),
                });
                pending.clear();
            }
        }
    }
    assert!(
        pending.is_empty(),
        "Dockerfile ends inside a continuation line"
    );
    instructions
}

/// The stages, each starting with its FROM.
fn stages() -> Vec<Vec<Instruction>> {
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for instruction in dockerfile() {
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push(instruction);
    }
    stages
}

fn runtime_stage() -> Vec<Instruction> {
    stages().pop().expect("the Dockerfile has a stage")
}

fn args_of<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|i| i.keyword == keyword)
        .map(|i| i.args.as_str())
        .collect()
}

fn exec_form(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|_| panic!("{what} should be in exec (JSON array) form, found `{args}`"))
}

/// The shell commands of a RUN, without its `--mount` style flags.
fn run_commands(args: &str) -> Vec<String> {
    let script: Vec<&str> = args
        .split_whitespace()
        .skip_while(|word| word.starts_with("--"))
        .collect();
    script
        .join(" ")
        .split("&&")
        .flat_map(|part| part.split(';'))
        .flat_map(|part| part.split("||"))
        .map(|part| part.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|part| !part.is_empty())
        .collect()
}

/// `ENV A=1 B=2` (or the legacy `ENV A 1`) of a stage, as a map.
fn env_of(stage: &[Instruction]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for args in args_of(stage, "ENV") {
        if args
            .split_whitespace()
            .next()
            .is_some_and(|w| w.contains('='))
        {
            for pair in args.split_whitespace() {
                let (k, v) = pair.split_once('=').expect("ENV pairs are KEY=value");
                env.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        } else if let Some((k, v)) = args.split_once(' ') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    env
}

const BUILD_COMMAND: &str = "cargo build --release --locked --bin herald";

#[test]
fn dockerfile_is_multi_stage_with_a_rust_builder_and_a_slim_runtime() {
    let stages = stages();
    assert!(
        stages.len() >= 2,
        "expected a build stage and a runtime stage, found {} FROM",
        stages.len()
    );
    let build_image = &stages[0][0].args;
    assert!(
        build_image.starts_with("rust:"),
        "the first stage should build with a rust image, found `{build_image}`"
    );
    let runtime_image = &stages.last().unwrap()[0].args;
    assert!(
        !runtime_image.starts_with("rust:"),
        "the runtime stage must not carry the toolchain: `{runtime_image}`"
    );
    assert!(
        runtime_image.contains("distroless") || runtime_image.contains("slim"),
        "the runtime stage should be a slim base, found `{runtime_image}`"
    );
}

#[test]
fn dockerfile_builds_with_exactly_the_locked_release_command() {
    let cargo_commands: Vec<String> = stages()[0]
        .iter()
        .filter(|i| i.keyword == "RUN")
        .flat_map(|i| run_commands(&i.args))
        .filter(|c| c.starts_with("cargo "))
        .collect();
    assert!(
        !cargo_commands.is_empty(),
        "the build stage runs no cargo command"
    );
    for command in &cargo_commands {
        assert_eq!(
            command, BUILD_COMMAND,
            "every cargo call must be the agreed one"
        );
    }
}

#[test]
fn dockerfile_runtime_stage_takes_the_binary_from_the_build_stage() {
    let runtime = runtime_stage();
    let entrypoint = exec_form(args_of(&runtime, "ENTRYPOINT")[0], "ENTRYPOINT");
    let copies = args_of(&runtime, "COPY");
    let binary_copies: Vec<&&str> = copies
        .iter()
        .filter(|c| c.ends_with(&format!(" {}", entrypoint[0])))
        .collect();
    assert_eq!(
        binary_copies.len(),
        1,
        "the runtime stage should COPY the binary to {} once: {copies:?}",
        entrypoint[0]
    );
    assert!(
        binary_copies[0].starts_with("--from="),
        "the binary should come from the build stage: {}",
        binary_copies[0]
    );
    assert!(
        args_of(&runtime, "ADD").is_empty(),
        "nothing should be ADDed to the runtime image"
    );
}

#[test]
fn dockerfile_runtime_stage_runs_no_shell_command_on_a_shell_less_base() {
    let runtime = runtime_stage();
    if runtime[0].args.contains("distroless") {
        assert!(
            args_of(&runtime, "RUN").is_empty(),
            "distroless has no /bin/sh, so RUN fails there; do it in the build stage"
        );
    }
}

#[test]
fn dockerfile_runs_as_a_non_root_user() {
    let runtime = runtime_stage();
    let users = args_of(&runtime, "USER");
    let user = users.last().expect("the runtime stage sets USER");
    let name = user.split(':').next().unwrap_or_default();
    assert!(
        !name.is_empty() && name != "root" && name != "0",
        "USER must not be root: `{user}`"
    );
}

#[test]
fn dockerfile_exposes_5000_and_keeps_sled_data_in_a_volume_at_data() {
    let runtime = runtime_stage();
    let exposed: Vec<&str> = args_of(&runtime, "EXPOSE")
        .into_iter()
        .flat_map(str::split_whitespace)
        .collect();
    assert!(
        exposed.iter().any(|p| *p == "5000" || *p == "5000/tcp"),
        "EXPOSE 5000 is missing: {exposed:?}"
    );

    let volumes: Vec<String> = args_of(&runtime, "VOLUME")
        .into_iter()
        .flat_map(|args| {
            serde_json::from_str::<Vec<String>>(args)
                .unwrap_or_else(|_| args.split_whitespace().map(String::from).collect())
        })
        .collect();
    assert!(
        volumes.iter().any(|v| v == "/data"),
        "VOLUME /data is missing: {volumes:?}"
    );

    let env = env_of(&runtime);
    assert_eq!(
        env.get("HERALD_DATA_DIR").map(String::as_str),
        Some("/data")
    );
    assert_eq!(
        env.get("HERALD_LISTEN").map(String::as_str),
        Some("0.0.0.0:5000")
    );
}

#[test]
fn dockerfile_starts_herald_serve_in_exec_form_so_sigterm_reaches_it() {
    let runtime = runtime_stage();
    let entrypoint = exec_form(args_of(&runtime, "ENTRYPOINT")[0], "ENTRYPOINT");
    assert_eq!(entrypoint, ["/usr/local/bin/herald"]);
    let cmd = exec_form(args_of(&runtime, "CMD")[0], "CMD");
    assert_eq!(cmd, ["serve"]);
    if let Some(signal) = args_of(&runtime, "STOPSIGNAL").first() {
        assert_eq!(*signal, "SIGTERM", "Herald drains and flushes on SIGTERM");
    }
}

/// The HEALTHCHECK's command line, which must not need a shell.
fn healthcheck_command() -> Vec<String> {
    let runtime = runtime_stage();
    let healthchecks = args_of(&runtime, "HEALTHCHECK");
    let args = healthchecks
        .last()
        .expect("the runtime stage has a HEALTHCHECK");
    assert_ne!(*args, "NONE", "the HEALTHCHECK must not be disabled");
    let (_, command) = args
        .split_once("CMD ")
        .unwrap_or_else(|| panic!("HEALTHCHECK has no CMD: `{args}`"));
    exec_form(command, "the HEALTHCHECK command (there is no shell)")
}

#[test]
fn dockerfile_healthcheck_probes_health_on_the_api_port_with_the_binary() {
    let command = healthcheck_command();
    assert_eq!(
        command[0], "/usr/local/bin/herald",
        "the image has no curl/wget: the binary probes itself"
    );
    assert!(
        command.iter().any(|w| w == "http://127.0.0.1:5000/health"),
        "the healthcheck should probe /health on port 5000: {command:?}"
    );
}

// The image's commands, run against the binary the Dockerfile builds.

fn herald(args: &[&str]) -> ExitStatus {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn herald");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait for herald") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("herald {args:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A one-connection HTTP server answering `status`; returns its port.
fn one_shot_server(status: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let body = r#"{"status":"ok"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// The Dockerfile's healthcheck arguments with the URL pointed at `url`.
fn healthcheck_args_for(url: &str) -> Vec<String> {
    healthcheck_command()
        .into_iter()
        .skip(1)
        .map(|w| {
            if w.starts_with("http://") {
                url.to_string()
            } else {
                w
            }
        })
        .collect()
}

#[test]
fn dockerfile_healthcheck_command_exits_0_when_healthy_and_1_otherwise() {
    let healthy = one_shot_server("200 OK");
    let args = healthcheck_args_for(&format!("http://127.0.0.1:{healthy}/health"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        herald(&args).code(),
        Some(0),
        "herald {args:?} against a 200"
    );

    let unhealthy = one_shot_server("503 Service Unavailable");
    let args = healthcheck_args_for(&format!("http://127.0.0.1:{unhealthy}/health"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        herald(&args).code(),
        Some(1),
        "herald {args:?} against a 503"
    );

    // Nothing listens on a port just released.
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let args = healthcheck_args_for(&format!("http://127.0.0.1:{closed}/health"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        herald(&args).code(),
        Some(1),
        "herald {args:?} with nothing listening"
    );
}

#[test]
fn image_and_compose_commands_are_real_herald_subcommands() {
    let cmd = exec_form(args_of(&runtime_stage(), "CMD")[0], "CMD");
    let compose = compose();
    let provider = command_words(service(&compose, "provider"));
    for words in [cmd, provider] {
        let mut args: Vec<&str> = words.iter().map(String::as_str).collect();
        args.push("--help");
        assert!(
            herald(&args).success(),
            "`herald {}` is not a command",
            args.join(" ")
        );
    }
}

// ---------------------------------------------------------------------------
// .dockerignore
// ---------------------------------------------------------------------------

/// Go's filepath.Match for one path component: `*`, `?` (no classes).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], name) || (!name.is_empty() && glob(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Whether the pattern's components match a leading part of the path's (so a
/// matched directory excludes everything under it); `**` matches any number.
fn pattern_matches(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.first() {
        None => true,
        Some(&"**") => (0..=path.len()).any(|skip| pattern_matches(&pattern[1..], &path[skip..])),
        Some(component) => {
            !path.is_empty()
                && glob(component.as_bytes(), path[0].as_bytes())
                && pattern_matches(&pattern[1..], &path[1..])
        }
    }
}

/// Whether .dockerignore keeps `path` (relative to the repo) out of the build context.
fn dockerignored(patterns: &[String], path: &str) -> bool {
    let path: Vec<&str> = path.split('/').collect();
    let mut ignored = false;
    for pattern in patterns {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern.as_str()),
        };
        let parts: Vec<&str> = pattern
            .trim_matches('/')
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        if pattern_matches(&parts, &path) {
            ignored = !negated;
        }
    }
    ignored
}

fn dockerignore_patterns() -> Vec<String> {
    read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// Target files Cargo.toml declares ([[bench]], [[example]], [[test]], [[bin]]):
/// cargo refuses to load the manifest when one is missing from the context.
fn declared_target_files() -> Vec<String> {
    // (default directory, name, explicit path) per target section.
    let mut sections: Vec<(&str, Option<String>, Option<String>)> = Vec::new();
    let mut in_target = false;
    for line in read("Cargo.toml").lines().map(str::trim) {
        if line.starts_with('[') {
            let dir = match line {
                "[[bench]]" => Some("benches"),
                "[[example]]" => Some("examples"),
                "[[test]]" => Some("tests"),
                "[[bin]]" => Some("src/bin"),
                _ => None,
            };
            in_target = dir.is_some();
            if let Some(dir) = dir {
                sections.push((dir, None, None));
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = Some(value.trim().trim_matches('"').to_string());
        match (in_target, key.trim(), sections.last_mut()) {
            (true, "name", Some(section)) => section.1 = value,
            (true, "path", Some(section)) => section.2 = value,
            _ => {}
        }
    }
    sections
        .into_iter()
        .filter_map(|(dir, name, path)| {
            path.or_else(|| {
                let name = name?;
                let nested = format!("{dir}/{name}/main.rs");
                Some(if repo().join(&nested).exists() {
                    nested
                } else {
                    format!("{dir}/{name}.rs")
                })
            })
        })
        .collect()
}

/// Files src/ embeds with include_bytes!/include_str!, relative to the repo.
fn embedded_files() -> Vec<String> {
    let root = repo();
    let mut out = Vec::new();
    for file in files_under(&root.join("src")) {
        let source = fs::read_to_string(&file).unwrap_or_default();
        for marker in ["include_bytes!(\"", "include_str!(\""] {
            for piece in source.split(marker).skip(1) {
                let Some((relative, _)) = piece.split_once('"') else {
                    continue;
                };
                let mut resolved = PathBuf::new();
                for component in file.parent().unwrap().join(relative).components() {
                    match component {
                        Component::ParentDir => {
                            resolved.pop();
                        }
                        Component::CurDir => {}
                        other => resolved.push(other),
                    }
                }
                if let Ok(inside) = resolved.strip_prefix(&root) {
                    out.push(inside.to_string_lossy().replace('\\', "/"));
                }
            }
        }
    }
    out
}

#[test]
fn dockerignore_keeps_local_data_and_build_output_out_of_the_context() {
    let patterns = dockerignore_patterns();
    for path in ["target", "target/release/herald", "data", "data/db", ".git"] {
        assert!(
            dockerignored(&patterns, path),
            "{path} should be in .dockerignore"
        );
    }
}

#[test]
fn dockerignore_keeps_everything_cargo_build_reads() {
    let patterns = dockerignore_patterns();
    let mut needed = vec!["Cargo.toml".to_string(), "Cargo.lock".to_string()];
    let root = repo();
    for file in files_under(&root.join("src")) {
        needed.push(
            file.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/"),
        );
    }
    needed.extend(declared_target_files());
    needed.extend(embedded_files());
    for path in &needed {
        assert!(
            repo().join(path).exists(),
            "{path} is needed by `cargo build` but missing from the repo"
        );
        assert!(
            !dockerignored(&patterns, path),
            "{path} is needed by `{BUILD_COMMAND}` but .dockerignore drops it"
        );
    }
}

#[test]
fn dockerignore_matcher_follows_docker_rules() {
    let patterns: Vec<String> = [
        "target",
        "*.log",
        "docs/**/*.png",
        "!docs/keep.png",
        "/data/",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    assert!(dockerignored(&patterns, "target/release/herald"));
    assert!(dockerignored(&patterns, "run.log"));
    assert!(dockerignored(&patterns, "docs/a/b.png"));
    assert!(dockerignored(&patterns, "data"));
    assert!(!dockerignored(&patterns, "docs/keep.png"));
    assert!(!dockerignored(&patterns, "src/target.rs"));
    assert!(!dockerignored(&patterns, "src/data/mod.rs"));
}

// ---------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------

#[test]
fn compose_defines_app_provider_influxdb_grafana_load_test_and_prometheus() {
    let compose = compose();
    for name in [
        "app",
        "provider",
        "influxdb",
        "grafana",
        "load-test",
        "prometheus",
    ] {
        service(&compose, name);
    }
}

#[test]
fn compose_app_is_built_here_and_publishes_port_5000() {
    let compose = compose();
    let app = service(&compose, "app");
    let context = scalar(&app["build"]).or_else(|| scalar(&app["build"]["context"]));
    assert_eq!(
        context.as_deref(),
        Some("."),
        "app should build this repo's Dockerfile"
    );
    assert!(strings(&app["ports"], "ports").contains(&"5000:5000".to_string()));
}

#[test]
fn compose_app_keeps_sled_data_in_a_named_volume_at_the_images_data_dir() {
    let compose = compose();
    let app = service(&compose, "app");
    let data_dir = env_of(&runtime_stage())
        .get("HERALD_DATA_DIR")
        .cloned()
        .expect("the image sets HERALD_DATA_DIR");
    let mounts = volumes(app);
    let source = volume_source_for(&mounts, &data_dir)
        .unwrap_or_else(|| panic!("app mounts nothing on {data_dir}: {mounts:?}"));
    assert!(
        !source.starts_with('.') && !source.starts_with('/'),
        "{data_dir} should be a named volume, not a bind mount: {source}"
    );
    assert!(
        !compose["volumes"][source].is_badvalue(),
        "volume `{source}` is not declared under top-level `volumes:`"
    );
}

#[test]
fn compose_app_calls_the_provider_service_with_the_key_the_simulator_accepts() {
    let compose = compose();
    let app = service(&compose, "app");
    let provider = service(&compose, "provider");
    assert_eq!(env_default(app, "PROVIDER_URL"), "http://provider:3001");
    assert!(depends_on(app).contains(&"provider".to_string()));
    let key = environment(app)["PROVIDER_API_KEY"].clone();
    assert!(
        !default_value(&key).is_empty(),
        "app needs a PROVIDER_API_KEY"
    );
    assert_eq!(
        environment(provider).get("PROVIDER_API_KEY"),
        Some(&key),
        "app and the simulator must agree on the API key"
    );
}

#[test]
fn compose_provider_runs_the_simulator_from_the_app_image() {
    let compose = compose();
    let app = service(&compose, "app");
    let provider = service(&compose, "provider");
    assert_eq!(command_words(provider), ["provider-sim"]);
    assert_eq!(
        provider["image"], app["image"],
        "provider should reuse app's image"
    );
    assert_eq!(
        provider["build"], app["build"],
        "provider must be buildable on its own: the README starts it before app"
    );
    assert!(strings(&provider["ports"], "ports").contains(&"3001:3001".to_string()));
    assert!(environment(provider).contains_key("SIM_ERROR_RATE"));
}

#[test]
fn compose_provider_healthcheck_probes_the_simulators_port() {
    let compose = compose();
    let test = strings(
        &service(&compose, "provider")["healthcheck"]["test"],
        "healthcheck",
    );
    assert_eq!(
        test.first().map(String::as_str),
        Some("CMD"),
        "exec form: no shell in the image"
    );
    assert!(
        test.iter().any(|w| w == "http://127.0.0.1:3001/health"),
        "the image's healthcheck probes 5000; the simulator listens on 3001: {test:?}"
    );
    assert_eq!(
        test[1..3],
        healthcheck_command()[..2],
        "same binary and subcommand as the image"
    );
}

#[test]
fn compose_and_dockerfile_env_vars_are_ones_herald_reads() {
    let known = env_vars_herald_reads();
    let compose = compose();
    let mut used: Vec<String> = ["app", "provider"]
        .iter()
        .flat_map(|name| environment(service(&compose, name)).into_keys())
        .collect();
    used.extend(env_of(&runtime_stage()).into_keys());
    // Read by the platform rather than a flag: the dynamic loader, the log filter.
    let platform = ["LD_LIBRARY_PATH", "RUST_LOG"];
    for name in used {
        assert!(
            known.contains(&name) || platform.contains(&name.as_str()),
            "{name} is not an env var any herald flag reads"
        );
    }
}

#[test]
fn compose_app_stop_grace_period_outlasts_herald_shutdown_grace() {
    let compose = compose();
    let app = service(&compose, "app");
    let grace_ms = match environment(app).get("HERALD_SHUTDOWN_GRACE_MS") {
        Some(value) => default_value(value).parse::<u64>().expect("a number of ms"),
        None => {
            let config = read("src/config.rs");
            let after = config
                .split("\"HERALD_SHUTDOWN_GRACE_MS\"")
                .nth(1)
                .expect("src/config.rs declares HERALD_SHUTDOWN_GRACE_MS");
            let default = after
                .split("default_value_t = ")
                .nth(1)
                .expect("HERALD_SHUTDOWN_GRACE_MS has a default");
            default
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '_')
                .filter(|c| *c != '_')
                .collect::<String>()
                .parse()
                .expect("a numeric default")
        }
    };
    let stop = text(&app["stop_grace_period"], "stop_grace_period");
    // The grace covers open connections and in-flight calls (at once); the
    // flush and exit come after it.
    assert!(
        duration_ms(&stop) >= grace_ms + 5_000,
        "stop_grace_period {stop} leaves no time to flush after a {grace_ms} ms grace"
    );
}

#[test]
fn compose_duration_parser_reads_compose_units() {
    assert_eq!(duration_ms("30s"), 30_000);
    assert_eq!(duration_ms("1m30s"), 90_000);
    assert_eq!(duration_ms("250ms"), 250);
}

#[test]
fn compose_influxdb_is_1_8_with_the_k6_database() {
    let compose = compose();
    let influxdb = service(&compose, "influxdb");
    assert_eq!(text(&influxdb["image"], "image"), "influxdb:1.8");
    assert_eq!(env_default(influxdb, "INFLUXDB_DB"), "k6");
    assert!(strings(&influxdb["ports"], "ports").contains(&"8086:8086".to_string()));
}

#[test]
fn compose_grafana_allows_anonymous_viewers_and_mounts_the_provisioning() {
    let compose = compose();
    let grafana = service(&compose, "grafana");
    assert!(text(&grafana["image"], "image").starts_with("grafana/grafana"));
    assert!(strings(&grafana["ports"], "ports").contains(&"3000:3000".to_string()));
    assert_eq!(env_default(grafana, "GF_AUTH_ANONYMOUS_ENABLED"), "true");
    assert_eq!(env_default(grafana, "GF_AUTH_ANONYMOUS_ORG_ROLE"), "Viewer");

    let mounts = volumes(grafana);
    assert_eq!(
        volume_source_for(&mounts, "/etc/grafana/provisioning"),
        Some("./deploy/grafana/provisioning")
    );
    let dashboards_dir = dashboards_provider_path();
    assert_eq!(
        volume_source_for(&mounts, &dashboards_dir),
        Some("./deploy/grafana/dashboards"),
        "the dashboards provider reads {dashboards_dir}; mount the dashboards there"
    );
    for (source, _) in &mounts {
        assert!(
            repo().join(source).exists(),
            "{source} does not exist in the repo"
        );
    }

    // The home dashboard path, if set, is a mounted file that exists.
    if let Some(home) = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        let file = home
            .strip_prefix(&format!("{dashboards_dir}/"))
            .unwrap_or_else(|| panic!("{home} is outside {dashboards_dir}"));
        assert!(repo().join("deploy/grafana/dashboards").join(file).exists());
    }
}

#[test]
fn compose_load_test_runs_the_k6_script_into_influxdb_only_on_demand() {
    let compose = compose();
    let load = service(&compose, "load-test");
    assert!(text(&load["image"], "image").starts_with("grafana/k6"));
    assert!(
        !strings(&load["profiles"], "profiles").is_empty(),
        "load-test needs a profile so `docker-compose up -d` does not start it"
    );
    let influx_db = env_default(service(&compose, "influxdb"), "INFLUXDB_DB");
    assert_eq!(
        env_default(load, "K6_OUT"),
        format!("influxdb=http://influxdb:8086/{influx_db}")
    );
    assert_eq!(env_default(load, "BASE_URL"), "http://app:5000");
    assert!(depends_on(load).contains(&"app".to_string()));

    let mounts = volumes(load);
    let scripts = volume_source_for(&mounts, "/scripts").expect("load-test mounts /scripts");
    assert_eq!(scripts, "./tests/load");
    assert_eq!(command_words(load), ["run", "/scripts/herald.js"]);
    assert!(
        repo().join("tests/load/herald.js").is_file(),
        "tests/load/herald.js, the k6 script load-test runs, is missing"
    );
}

#[test]
fn compose_prometheus_mounts_the_scrape_config() {
    let compose = compose();
    let prometheus = service(&compose, "prometheus");
    assert!(text(&prometheus["image"], "image").starts_with("prom/prometheus"));
    assert!(strings(&prometheus["ports"], "ports").contains(&"9090:9090".to_string()));
    assert_eq!(
        volume_source_for(&volumes(prometheus), "/etc/prometheus/prometheus.yml"),
        Some("./deploy/prometheus/prometheus.yml")
    );
}

/// The services `docker-compose up -d <names>` starts: the names and their depends_on.
fn started_by(compose: &Yaml, names: &[&str]) -> BTreeSet<String> {
    let mut started = BTreeSet::new();
    let mut queue: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    while let Some(name) = queue.pop() {
        if started.insert(name.clone()) {
            queue.extend(depends_on(service(compose, &name)));
        }
    }
    started
}

#[test]
fn compose_readme_first_step_starts_the_infrastructure_without_app() {
    let compose = compose();
    let started = started_by(&compose, &["provider", "influxdb", "grafana"]);
    assert!(
        !started.contains("app"),
        "step 1 must not need app yet: {started:?}"
    );
    assert!(!started.contains("load-test"));
    assert!(
        started.contains("prometheus"),
        "grafana's Prometheus should come up with it"
    );
    // A service with no published image (none named, or this repo's) must be
    // buildable, or `up` would try to pull it.
    for name in &started {
        let s = service(&compose, name);
        let local = scalar(&s["image"]).is_none_or(|image| image.starts_with("herald"));
        assert!(
            !local || !s["build"].is_badvalue(),
            "{name} uses a local image but has no build section"
        );
    }
}

// ---------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------

#[test]
fn prometheus_scrapes_app_metrics_on_port_5000() {
    let config = yaml("deploy/prometheus/prometheus.yml");
    let jobs = config["scrape_configs"]
        .as_vec()
        .expect("prometheus.yml has scrape_configs");
    let herald = jobs
        .iter()
        .find(|job| {
            job["static_configs"]
                .as_vec()
                .into_iter()
                .flatten()
                .any(|sc| strings(&sc["targets"], "targets").contains(&"app:5000".to_string()))
        })
        .expect("a scrape job targets app:5000");
    assert_eq!(text(&herald["metrics_path"], "metrics_path"), "/metrics");
    // Inside the compose network Prometheus reaches app's container port.
    let compose = compose();
    let container_ports: Vec<String> = strings(&service(&compose, "app")["ports"], "ports")
        .iter()
        .filter_map(|p| p.rsplit(':').next().map(String::from))
        .collect();
    assert!(
        container_ports.contains(&"5000".to_string()),
        "{container_ports:?}"
    );
}

// ---------------------------------------------------------------------------
// Grafana provisioning
// ---------------------------------------------------------------------------

const DATASOURCES: &str = "deploy/grafana/provisioning/datasources/datasources.yml";
const DASHBOARD_PROVIDERS: &str = "deploy/grafana/provisioning/dashboards/dashboards.yml";
const DASHBOARD: &str = "deploy/grafana/dashboards/backend-performance-scorecard.json";

/// Data sources by uid: (type, url, database).
fn datasources() -> BTreeMap<String, (String, String, Option<String>)> {
    let config = yaml(DATASOURCES);
    assert_eq!(config["apiVersion"].as_i64(), Some(1));
    config["datasources"]
        .as_vec()
        .expect("datasources list")
        .iter()
        .map(|ds| {
            let database = scalar(&ds["jsonData"]["dbName"]).or_else(|| scalar(&ds["database"]));
            (
                text(&ds["uid"], "uid"),
                (text(&ds["type"], "type"), text(&ds["url"], "url"), database),
            )
        })
        .collect()
}

fn dashboards_provider_path() -> String {
    let config = yaml(DASHBOARD_PROVIDERS);
    assert_eq!(config["apiVersion"].as_i64(), Some(1));
    let providers = config["providers"].as_vec().expect("providers list");
    assert_eq!(providers.len(), 1, "one dashboards provider");
    assert_eq!(text(&providers[0]["type"], "type"), "file");
    text(&providers[0]["options"]["path"], "options.path")
}

#[test]
fn grafana_datasources_are_influxdb_k6_and_prometheus_on_the_compose_services() {
    let datasources = datasources();
    let (kind, url, database) = datasources.get("influxdb").expect("uid influxdb");
    assert_eq!(kind, "influxdb");
    assert_eq!(url, "http://influxdb:8086");
    let k6_db = env_default(service(&compose(), "influxdb"), "INFLUXDB_DB");
    assert_eq!(database.as_deref(), Some(k6_db.as_str()));

    let (kind, url, _) = datasources.get("prometheus").expect("uid prometheus");
    assert_eq!(kind, "prometheus");
    assert_eq!(url, "http://prometheus:9090");
}

#[test]
fn grafana_dashboards_provider_reads_a_folder_holding_the_scorecard() {
    let path = dashboards_provider_path();
    assert!(
        path.starts_with('/'),
        "options.path is a container path: {path}"
    );
    assert!(repo().join(DASHBOARD).is_file());
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is valid JSON")
}

/// Every panel, including those inside collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every (datasource uid, target) of the dashboard's data panels.
fn targets(dashboard: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let uid = target["datasource"]["uid"]
                .as_str()
                .or_else(|| panel["datasource"]["uid"].as_str())
                .unwrap_or_else(|| {
                    panic!("panel {} has a target without a datasource", panel["title"])
                });
            out.push((uid.to_string(), target));
        }
    }
    out
}

fn prometheus_exprs(dashboard: &Value) -> Vec<String> {
    targets(dashboard)
        .into_iter()
        .filter(|(uid, _)| uid == "prometheus")
        .map(|(_, t)| {
            t["expr"]
                .as_str()
                .expect("a Prometheus target has an expr")
                .to_string()
        })
        .collect()
}

fn influx_queries(dashboard: &Value) -> Vec<String> {
    targets(dashboard)
        .into_iter()
        .filter(|(uid, _)| uid == "influxdb")
        .map(|(_, t)| {
            assert_eq!(
                t["rawQuery"],
                Value::Bool(true),
                "InfluxDB targets are raw InfluxQL"
            );
            t["query"]
                .as_str()
                .expect("an InfluxDB target has a query")
                .to_string()
        })
        .collect()
}

#[test]
fn grafana_dashboard_is_the_scorecard_and_every_panel_queries_a_provisioned_datasource() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "backend-performance-scorecard");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    let panels = panels(&dashboard);
    assert!(!panels.is_empty(), "the dashboard has no panels");

    let known = datasources();
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let id = panel["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().map(Vec::len).unwrap_or(0);
        assert!(targets > 0, "panel {} queries nothing", panel["title"]);
    }
    for (uid, _) in targets(&dashboard) {
        assert!(
            known.contains_key(&uid),
            "datasource uid `{uid}` is not provisioned"
        );
    }
}

// -- Prometheus queries name only metrics Herald exports (docs/metrics.md) ----

/// The series names docs/metrics.md lists: counters and gauges as named,
/// histograms as their `_bucket`, `_sum` and `_count` series.
fn exported_series() -> BTreeSet<String> {
    let mut series = BTreeSet::new();
    for line in read("docs/metrics.md").lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `name` | type | labels | what |
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1].trim_matches('`');
        match cells[2] {
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    series.insert(format!("{name}{suffix}"));
                }
            }
            "counter" | "gauge" => {
                series.insert(name.to_string());
            }
            other => panic!("docs/metrics.md: unknown type `{other}` for {name}"),
        }
    }
    assert!(
        series.len() >= 10,
        "docs/metrics.md's table did not parse: {series:?}"
    );
    series
}

const PROMQL_AGGREGATIONS: &str = "\
    sum min max avg group stddev stdvar count count_values bottomk topk quantile \
    limitk limit_ratio";
const PROMQL_FUNCTIONS: &str = "\
    abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min \
    count_over_time delta deriv floor histogram_quantile idelta increase irate \
    label_replace last_over_time max_over_time min_over_time quantile_over_time rate \
    resets round scalar sort sort_desc sqrt sum_over_time time timestamp vector";
/// Keywords followed by a label list in parentheses.
const PROMQL_LABEL_LIST_KEYWORDS: &str = "\
    by without on ignoring group_left group_right";
const PROMQL_KEYWORDS: &str = "\
    and or unless bool offset inf nan";

/// Whether a whitespace-separated word list holds `word`.
fn listed(list: &str, word: &str) -> bool {
    list.split_whitespace().any(|w| w == word)
}

/// The metric names and function names a PromQL expression uses. Label
/// matchers, label lists, ranges, strings, numbers and Grafana variables are skipped.
fn promql_names(expr: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let chars: Vec<char> = expr.chars().collect();
    let (mut metrics, mut functions) = (Vec::new(), Vec::new());
    let mut i = 0;
    let skip_to = |from: usize, close: char| -> Result<usize, String> {
        chars[from..]
            .iter()
            .position(|c| *c == close)
            .map(|p| from + p + 1)
            .ok_or_else(|| format!("unclosed `{close}` in `{expr}`"))
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            // Label matchers hold no metric names (strings in them may hold `}` in theory; not here).
            i = skip_to(i, '}')?;
        } else if c == '[' {
            i = skip_to(i, ']')?;
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i + 1, c)?;
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let lower = word.to_ascii_lowercase();
            let called = chars.get(next) == Some(&'(');
            if listed(PROMQL_LABEL_LIST_KEYWORDS, lower.as_str()) {
                if called {
                    i = skip_to(next, ')')?;
                }
            } else if listed(PROMQL_AGGREGATIONS, word.as_str()) || called {
                functions.push(word);
            } else if !listed(PROMQL_KEYWORDS, lower.as_str()) {
                metrics.push(word);
            }
        } else {
            i += 1;
        }
    }
    Ok((metrics, functions))
}

/// What is wrong with an expression's names, if anything.
fn promql_problems(expr: &str, exported: &BTreeSet<String>) -> Vec<String> {
    match promql_names(expr) {
        Err(error) => vec![error],
        Ok((metrics, functions)) => {
            let mut problems: Vec<String> = Vec::new();
            if metrics.is_empty() {
                problems.push("names no metric".to_string());
            }
            problems.extend(
                metrics
                    .into_iter()
                    .filter(|m| !exported.contains(m))
                    .map(|m| format!("`{m}` is not a series Herald exports (docs/metrics.md)")),
            );
            problems.extend(
                functions
                    .into_iter()
                    .filter(|f| {
                        !listed(PROMQL_FUNCTIONS, f.as_str())
                            && !listed(PROMQL_AGGREGATIONS, f.as_str())
                    })
                    .map(|f| format!("`{f}` is not a PromQL function")),
            );
            problems
        }
    }
}

#[test]
fn promql_checker_accepts_exported_series_and_rejects_others() {
    let exported = exported_series();
    let fine = [
        r#"sum by (route) (rate(herald_http_requests_total{status=~"5.."}[$__rate_interval]))"#,
        "histogram_quantile(0.99, sum by (le, route) (rate(herald_http_request_duration_seconds_bucket[5m])))",
        "sum(rate(herald_group_commit_batch_size_sum[1m])) / sum(rate(herald_group_commit_batch_size_count[1m]))",
        "max(herald_circuit_breaker_state) > bool 1",
        "sum(herald_outbox_depth) without (priority)",
    ];
    for expr in fine {
        assert_eq!(
            promql_problems(expr, &exported),
            Vec::<String>::new(),
            "{expr}"
        );
    }
    let wrong = [
        "sum(rate(herald_bogus_total[5m]))",
        // A histogram's bare name is no series.
        "rate(herald_http_request_duration_seconds[5m])",
        "sum by (job) (up)",
        "rate_of(herald_http_requests_total[5m])",
        r#"sum(rate({__name__="herald_http_requests_total"}[5m]))"#,
    ];
    for expr in wrong {
        assert!(
            !promql_problems(expr, &exported).is_empty(),
            "should be rejected: {expr}"
        );
    }
}

#[test]
fn grafana_prometheus_queries_name_only_metrics_herald_exports() {
    let exported = exported_series();
    let exprs = prometheus_exprs(&dashboard());
    assert!(!exprs.is_empty(), "the dashboard has no Prometheus query");
    for expr in exprs {
        let problems = promql_problems(&expr, &exported);
        assert!(problems.is_empty(), "`{expr}`: {problems:?}");
    }
}

// -- InfluxDB queries read k6's measurements ------------------------------------

/// k6's built-in metrics, which its InfluxDB output writes as measurements.
const K6_MEASUREMENTS: &str = "\
    checks data_received data_sent dropped_iterations group_duration \
    http_req_blocked http_req_connecting http_req_duration http_req_failed \
    http_req_receiving http_req_sending http_req_tls_handshaking http_req_waiting \
    http_reqs iteration_duration iterations vus vus_max";

/// Custom metrics the k6 script declares (`new Trend('name')` and the like).
fn k6_script_metrics() -> BTreeSet<String> {
    let script = fs::read_to_string(repo().join("tests/load/herald.js")).unwrap_or_default();
    let mut names = BTreeSet::new();
    for kind in ["Counter", "Gauge", "Rate", "Trend"] {
        for piece in script.split(&format!("new {kind}(")).skip(1) {
            let piece = piece.trim_start();
            let quote = piece.chars().next().filter(|c| "'\"`".contains(*c));
            if let Some((name, _)) = quote.and_then(|q| piece[1..].split_once(q)) {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The measurements an InfluxQL query reads (`FROM "name"` or `FROM name`).
fn influx_measurements(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let upper = query.to_ascii_uppercase();
    let mut from = 0;
    while let Some(found) = upper[from..].find("FROM ") {
        let start = from + found + "FROM ".len();
        let rest = query[start..].trim_start();
        let name = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next().unwrap_or_default().to_string(),
            None => rest
                .split(|c: char| c.is_whitespace() || c == ',')
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        out.push(name);
        from = start;
    }
    out
}

#[test]
fn influx_measurement_parser_reads_from_clauses() {
    assert_eq!(
        influx_measurements(
            r#"SELECT percentile("value", 95) FROM "http_req_duration" WHERE $timeFilter"#
        ),
        ["http_req_duration"]
    );
    assert_eq!(
        influx_measurements("select sum(value) from http_reqs where $timeFilter"),
        ["http_reqs"]
    );
    assert!(influx_measurements("SELECT 1").is_empty());
}

#[test]
fn grafana_influx_queries_read_k6_measurements_within_the_time_picker() {
    let mut known: BTreeSet<String> = K6_MEASUREMENTS
        .split_whitespace()
        .map(String::from)
        .collect();
    known.extend(k6_script_metrics());
    let queries = influx_queries(&dashboard());
    assert!(
        !queries.is_empty(),
        "the dashboard has no k6 (InfluxDB) query"
    );
    for query in queries {
        let measurements = influx_measurements(&query);
        assert!(!measurements.is_empty(), "`{query}` reads no measurement");
        for m in measurements {
            assert!(known.contains(&m), "`{query}`: `{m}` is not a k6 metric");
        }
        assert!(
            query.contains("$timeFilter"),
            "`{query}` ignores the dashboard's time range"
        );
    }
}

// -- The scorecard shows what the challenge judges ------------------------------

#[test]
fn grafana_dashboard_shows_throughput_latency_outcomes_retries_queue_breaker_and_batching() {
    let dashboard = dashboard();
    let exprs = prometheus_exprs(&dashboard).join("\n");
    let queries = influx_queries(&dashboard).join("\n");
    let used: BTreeSet<String> = prometheus_exprs(&dashboard)
        .iter()
        .flat_map(|e| promql_names(e).map(|(m, _)| m).unwrap_or_default())
        .collect();
    for (series, what) in [
        ("herald_http_requests_total", "Herald throughput"),
        (
            "herald_http_request_duration_seconds_bucket",
            "Herald endpoint latency",
        ),
        (
            "herald_requests_finished_total",
            "share of requests sent / failed",
        ),
        (
            "herald_provider_attempts_total",
            "provider errors absorbed and retries",
        ),
        ("herald_outbox_depth", "queue depth over time"),
        ("herald_circuit_breaker_state", "circuit breaker state"),
        (
            "herald_group_commit_batch_size_bucket",
            "group commit batch size",
        ),
    ] {
        assert!(used.contains(series), "no panel shows {what} ({series})");
    }
    for quantile in ["histogram_quantile(0.95,", "histogram_quantile(0.99,"] {
        assert!(
            exprs.contains(quantile),
            "no {quantile} over Herald's latency"
        );
    }
    let measurements: BTreeSet<String> = influx_queries(&dashboard)
        .iter()
        .flat_map(|q| influx_measurements(q))
        .collect();
    for m in ["http_reqs", "http_req_duration"] {
        assert!(measurements.contains(m), "no panel shows k6's {m}");
    }
    for p in [r#"percentile("value", 95)"#, r#"percentile("value", 99)"#] {
        assert!(queries.contains(p), "no k6 {p}");
    }
    assert!(
        queries.contains("\"name\""),
        "k6 latency should be split by request name"
    );
}
