//! Where a drill keeps Herald's data directory and log: a fresh temporary
//! directory (removed when the drill passes) or one the user names (kept).

use std::io;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Workspace {
    root: PathBuf,
    temporary: bool,
}

impl Workspace {
    /// Uses `given`, which must not hold a data directory yet (a drill must
    /// start from an empty outbox), or creates a temporary directory.
    pub fn prepare(given: Option<PathBuf>) -> io::Result<Self> {
        let workspace = match given {
            Some(root) => Self {
                root,
                temporary: false,
            },
            None => Self {
                root: std::env::temp_dir().join(unique_name()),
                temporary: true,
            },
        };
        if workspace.data_dir().exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} already holds a data directory",
                    workspace.root.display()
                ),
            ));
        }
        std::fs::create_dir_all(&workspace.root)?;
        Ok(workspace)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.root.join("herald.log")
    }

    /// Removes a temporary workspace after a pass; otherwise says where it is.
    pub fn finish(self, passed: bool) {
        if passed && self.temporary {
            if let Err(error) = std::fs::remove_dir_all(&self.root) {
                eprintln!("could not remove {}: {error}", self.root.display());
            }
        } else {
            eprintln!("Herald's data and log are in {}", self.root.display());
        }
    }
}

fn unique_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("herald-drill-{}-{nanos}", std::process::id())
}
