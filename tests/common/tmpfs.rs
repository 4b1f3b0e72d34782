//! A small tmpfs mounted for one test, so a disk really fills up, turns
//! read-only or gets more room. Mounting needs root (CI runs as root); where
//! the test cannot mount one it says so on standard error and skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

pub struct Tmpfs {
    mount_point: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_kib` KiB; `None`, with the reason printed,
    /// where this test run cannot mount one.
    pub fn mount(size_kib: u64) -> Option<Self> {
        let mount_point = TempDir::new().expect("a mount point");
        let options = format!("size={size_kib}k");
        let mounted = mount(
            &["-t", "tmpfs", "-o", &options, "tmpfs"],
            mount_point.path(),
        );
        match mounted {
            Ok(()) => Some(Self { mount_point }),
            Err(why) => {
                super::missing(
                    &format!("a tmpfs this test can fill ({why})"),
                    "run the tests as root, where mount(8) works",
                );
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.mount_point.path()
    }

    /// A data directory inside the mount (not made yet).
    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    /// Gives the filesystem `size_kib` KiB in all: room comes back at once.
    pub fn resize(&self, size_kib: u64) {
        let options = format!("remount,size={size_kib}k");
        mount(&["-o", &options], self.path()).expect("tmpfs resized");
    }

    pub fn make_read_only(&self) {
        mount(&["-o", "remount,ro"], self.path()).expect("tmpfs remounted read-only");
    }

    /// Writes a file until the filesystem is full; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("filler created");
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a child killed a moment ago may still hold a file open.
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

fn mount(args: &[&str], point: &Path) -> Result<(), String> {
    let output = Command::new("mount")
        .args(args)
        .arg(point)
        .output()
        .map_err(|error| format!("cannot run mount: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}
