//! API keys clients present (`Authorization: Bearer KEY`): the client keys
//! file (`name key` per line) and the metrics key file, read at start and
//! again on SIGHUP. Off unless a file is given.
//!
//! Keys are kept as SHA-256 digests and a presented key is compared with
//! every one of them in constant time: neither a key's bytes nor its length
//! shows in how long a refusal takes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

/// Shortest key accepted: 16 characters (about 95 bits if random).
pub const MIN_KEY_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

type Digest = [u8; 32];

fn digest_of(key: &str) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref());
    out
}

/// One file's keys: for the client file, each with its client's name.
#[derive(Debug, Default)]
struct KeySet {
    entries: Vec<(Digest, Arc<str>)>,
}

impl KeySet {
    /// The name of the key equal to `presented`, looking at every key.
    fn find(&self, presented: &str) -> Option<Arc<str>> {
        let presented = digest_of(presented);
        let mut found = None;
        for (digest, name) in &self.entries {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(name.clone());
            }
        }
        found
    }
}

/// Reads the client keys file: `name key` per line; blank lines and lines
/// starting with `#` are skipped. Names and keys are unique.
fn read_client_keys(path: &Path) -> Result<KeySet, KeyError> {
    let content = read(path)?;
    let invalid = |line: usize, reason: &str| KeyError::Invalid {
        path: path.to_path_buf(),
        line,
        reason: reason.to_string(),
    };
    let mut set = KeySet::default();
    for (index, line) in content.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(name), Some(key), None) = (words.next(), words.next(), words.next()) else {
            return Err(invalid(line_no, "expected `name key`"));
        };
        check_key(key).map_err(|reason| invalid(line_no, reason))?;
        let digest = digest_of(key);
        if set
            .entries
            .iter()
            .any(|(d, n)| *d == digest || **n == *name)
        {
            return Err(invalid(line_no, "a name or key given twice"));
        }
        set.entries.push((digest, Arc::from(name)));
    }
    Ok(set)
}

/// Reads a file holding one key (surrounding whitespace ignored).
fn read_single_key(path: &Path) -> Result<KeySet, KeyError> {
    let content = read(path)?;
    let key = content.trim();
    check_key(key).map_err(|reason| KeyError::Invalid {
        path: path.to_path_buf(),
        line: 1,
        reason: reason.to_string(),
    })?;
    Ok(KeySet {
        entries: vec![(digest_of(key), Arc::from("metrics"))],
    })
}

fn check_key(key: &str) -> Result<(), &'static str> {
    if key.chars().count() < MIN_KEY_LEN {
        return Err("a key must be at least 16 characters");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a key must be visible ASCII");
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The keys in force, and where they come from.
#[derive(Debug)]
pub struct Keys {
    client_file: Option<PathBuf>,
    metrics_file: Option<PathBuf>,
    clients: RwLock<Arc<KeySet>>,
    metrics: RwLock<Arc<KeySet>>,
}

impl Keys {
    /// Reads both files, when given; an unreadable or invalid one is an error.
    pub fn load(client_file: Option<&Path>, metrics_file: Option<&Path>) -> Result<Self, KeyError> {
        let keys = Self {
            client_file: client_file.map(Path::to_path_buf),
            metrics_file: metrics_file.map(Path::to_path_buf),
            clients: RwLock::default(),
            metrics: RwLock::default(),
        };
        keys.reload()?;
        Ok(keys)
    }

    /// No keys at all: every caller is let in.
    pub fn none() -> Self {
        Self {
            client_file: None,
            metrics_file: None,
            clients: RwLock::default(),
            metrics: RwLock::default(),
        }
    }

    /// Reads the files again; on any error the keys in force stay.
    pub fn reload(&self) -> Result<usize, KeyError> {
        let clients = self
            .client_file
            .as_deref()
            .map(read_client_keys)
            .transpose()?;
        let metrics = self
            .metrics_file
            .as_deref()
            .map(read_single_key)
            .transpose()?;
        let count = clients.as_ref().map_or(0, |set| set.entries.len());
        if let Some(clients) = clients {
            *write(&self.clients) = Arc::new(clients);
        }
        if let Some(metrics) = metrics {
            *write(&self.metrics) = Arc::new(metrics);
        }
        Ok(count)
    }

    /// Whether `/v1/*` calls need a client key.
    pub fn clients_required(&self) -> bool {
        self.client_file.is_some()
    }

    /// The client whose key `presented` is.
    pub fn client(&self, presented: &str) -> Option<Arc<str>> {
        read_lock(&self.clients).find(presented)
    }

    /// Whether `/metrics` needs its key.
    pub fn metrics_key_required(&self) -> bool {
        self.metrics_file.is_some()
    }

    pub fn is_metrics_key(&self, presented: &str) -> bool {
        read_lock(&self.metrics).find(presented).is_some()
    }
}

fn write(lock: &RwLock<Arc<KeySet>>) -> std::sync::RwLockWriteGuard<'_, Arc<KeySet>> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read_lock(lock: &RwLock<Arc<KeySet>>) -> Arc<KeySet> {
    lock.read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// Whether anyone who reaches `listen` from another host may use the API.
fn open_to_others(keys: &Keys, listen: std::net::SocketAddr) -> bool {
    !keys.clients_required() && !listen.ip().is_loopback()
}

/// Logs a warning when anyone who reaches `listen` may use the API.
pub fn warn_if_open(keys: &Keys, listen: std::net::SocketAddr) {
    if open_to_others(keys, listen) {
        tracing::warn!(
            %listen,
            "no client keys (--client-keys-file) and a non-loopback address: anyone who reaches it can create and read every request"
        );
    }
}

/// Reads the key files again on every SIGHUP, until `shutdown`.
#[cfg(unix)]
pub fn reload_on_sighup(keys: Arc<Keys>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    if !keys.clients_required() && !keys.metrics_key_required() {
        return;
    }
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; keys are read only at start");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(()) = hangups.recv() => match keys.reload() {
                    Ok(clients) => tracing::info!(clients, "keys reloaded"),
                    Err(error) => tracing::error!(%error, "keys not reloaded; the previous ones stay"),
                },
            }
        }
    });
}

#[cfg(not(unix))]
pub fn reload_on_sighup(_keys: Arc<Keys>, _shutdown: CancellationToken) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn client_keys_name_their_client() {
        let (_dir, path) =
            file("# comment\n\nbilling 0123456789abcdef\nsupport  fedcba9876543210zz\n");
        let keys = Keys::load(Some(&path), None).unwrap();
        assert!(keys.clients_required() && !keys.metrics_key_required());
        assert_eq!(keys.client("0123456789abcdef").as_deref(), Some("billing"));
        assert_eq!(
            keys.client("fedcba9876543210zz").as_deref(),
            Some("support")
        );
        assert_eq!(keys.client("0123456789abcdeX"), None);
        assert_eq!(keys.client(""), None);
    }

    #[test]
    fn a_bad_file_is_refused_with_its_line() {
        for (content, reason) in [
            ("billing\n", "expected `name key`"),
            ("billing key with spaces\n", "expected `name key`"),
            ("billing short\n", "at least 16"),
            ("a 0123456789abcdef\na 0123456789abcdeg\n", "twice"),
            ("a 0123456789abcdef\nb 0123456789abcdef\n", "twice"),
        ] {
            let (_dir, path) = file(content);
            let error = Keys::load(Some(&path), None).unwrap_err().to_string();
            assert!(error.contains(reason), "{content:?}: {error}");
        }
        let missing = Keys::load(Some(Path::new("/nonexistent/keys")), None);
        assert!(matches!(missing, Err(KeyError::Read { .. })));
    }

    #[test]
    fn a_reload_replaces_the_keys_and_a_failed_one_keeps_them() {
        let (_dir, path) = file("billing 0123456789abcdef\n");
        let keys = Keys::load(Some(&path), None).unwrap();
        std::fs::write(&path, "billing 1111111111111111\n").unwrap();
        assert_eq!(keys.reload().unwrap(), 1);
        assert_eq!(keys.client("0123456789abcdef"), None);
        assert!(keys.client("1111111111111111").is_some());
        std::fs::write(&path, "broken\n").unwrap();
        assert!(keys.reload().is_err());
        assert!(keys.client("1111111111111111").is_some(), "kept");
    }

    #[test]
    fn no_keys_on_a_non_loopback_address_is_open_to_others() {
        let (_dir, path) = file("billing 0123456789abcdef\n");
        let keyed = Keys::load(Some(&path), None).unwrap();
        let any = "0.0.0.0:5000".parse().unwrap();
        assert!(open_to_others(&Keys::none(), any));
        assert!(!open_to_others(&keyed, any));
        for loopback in ["127.0.0.1:5000", "[::1]:5000"] {
            assert!(!open_to_others(&Keys::none(), loopback.parse().unwrap()));
        }
    }

    #[test]
    fn the_metrics_key_is_its_own() {
        let (_dir, path) = file("  metrics-0123456789\n");
        let keys = Keys::load(None, Some(&path)).unwrap();
        assert!(!keys.clients_required() && keys.metrics_key_required());
        assert!(keys.is_metrics_key("metrics-0123456789"));
        assert!(!keys.is_metrics_key("metrics-012345678"));
        assert!(Keys::none().client("metrics-0123456789").is_none());
    }
}
