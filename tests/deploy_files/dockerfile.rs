//! The Dockerfile, parsed as Docker reads it (instructions, stages, exec
//! forms, ENV), and what its build and runtime stages must do.

use std::collections::BTreeMap;

use crate::files::read;

#[derive(Debug, Clone)]
pub struct Instruction {
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

pub fn runtime_stage() -> Vec<Instruction> {
    stages().pop().expect("the Dockerfile has a stage")
}

pub fn args_of<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|i| i.keyword == keyword)
        .map(|i| i.args.as_str())
        .collect()
}

pub fn exec_form(args: &str, what: &str) -> Vec<String> {
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
pub fn env_of(stage: &[Instruction]) -> BTreeMap<String, String> {
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

pub const BUILD_COMMAND: &str = "cargo build --release --locked --bin herald";

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
fn dockerfile_exposes_5000_and_keeps_its_data_in_a_volume_at_data() {
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
pub fn healthcheck_command() -> Vec<String> {
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
