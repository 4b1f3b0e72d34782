//! .dockerignore, matched as Docker matches it, against what `cargo build`
//! reads and what must stay out of the build context.

use std::fs;
use std::path::{Component, PathBuf};

use crate::dockerfile::BUILD_COMMAND;
use crate::files::{files_under, read, repo};

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
