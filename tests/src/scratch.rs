//! A directory of one test's own for the files it hands the broker
//! (certificates, password files, ACL files): made empty under the
//! system's temporary directory and removed when dropped, so no test sees
//! another's files, in this process or another.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A test's own directory, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// `tidemq-{area}-{name}-{pid}-{n}`, empty; `n` counts the directories
    /// made in this process.
    pub fn new(area: &str, name: &str) -> ScratchDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tidemq-{area}-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }

    /// A file in the directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
