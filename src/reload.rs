//! Values built from files on disk and rebuilt when those files change: the API key from a
//! mounted Secret, the TLS certificate and key that cert-manager renews.
//!
//! A change is noticed by the files' identity (device, inode, size, mtime), one `stat` per file
//! and per use: cheap next to what the value is used for (a request upstream, a TLS handshake),
//! and the first use after a rotation already sees the new value, with no timer and no
//! background task. Kubernetes updates a mounted Secret by swapping a symlink to a new
//! directory, so every file gets a new inode at once; `stat` follows the symlink. Other writers
//! should likewise rename a new file into place: a rewrite in place that keeps the size within
//! one tick of the kernel's coarse file clock leaves the stamp unchanged and goes unnoticed
//! until the next change.
//!
//! A rebuild that fails (a half-written file, a certificate that does not match its key) keeps
//! the last good value and logs one warning; the next change of the files is tried again.
//! Messages name paths and reasons, never file contents, since the files hold secrets.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

/// The identity of a file on disk: changes when the file is replaced or rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    /// Stats `path`, following symlinks.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

/// Builds the value from the files' paths; the message says what is wrong without contents.
pub type Loader<T> = fn(&[PathBuf]) -> Result<T, String>;

/// A value of type `T` (cheap to clone: a `HeaderValue`, an `Arc`) kept in step with files.
#[derive(Debug)]
pub struct Reloading<T> {
    /// What the files hold, for log lines ("api key", "tls certificate").
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Loader<T>,
    state: RwLock<State<T>>,
}

#[derive(Debug)]
struct State<T> {
    /// Stamps of the files as last tried, successful or not: a failed rebuild is not retried
    /// (nor logged again) until the files change once more.
    seen: Vec<Stamp>,
    value: T,
}

fn stamps(paths: &[PathBuf]) -> Result<Vec<Stamp>, String> {
    paths
        .iter()
        .map(|p| Stamp::of(p).map_err(|e| format!("cannot read {}: {e}", p.display())))
        .collect()
}

impl<T: Clone> Reloading<T> {
    /// Loads once; any failure here fails start-up.
    pub fn new(what: &'static str, paths: Vec<PathBuf>, load: Loader<T>) -> Result<Self, String> {
        let seen = stamps(&paths).map_err(|e| format!("{what}: {e}"))?;
        let value = load(&paths)?;
        Ok(Self {
            what,
            paths,
            load,
            state: RwLock::new(State { seen, value }),
        })
    }

    /// The value now: rebuilt first if any file changed since the last look. While a file is
    /// missing (mid-rotation) the last good value is served.
    pub fn current(&self) -> T {
        let Ok(now) = stamps(&self.paths) else {
            return self.read().value.clone();
        };
        {
            let state = self.read();
            if state.seen == now {
                return state.value.clone();
            }
        }
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        // Another caller may have rebuilt while this one waited for the lock.
        if state.seen != now {
            state.seen = now;
            match (self.load)(&self.paths) {
                Ok(value) => {
                    state.value = value;
                    tracing::info!(what = self.what, paths = ?self.paths, "file changed on disk; new value in use");
                }
                Err(error) => {
                    tracing::warn!(what = self.what, %error, "file changed on disk but cannot be used; keeping the previous value");
                }
            }
        }
        state.value.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State<T>> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static LOADS: AtomicUsize = AtomicUsize::new(0);

    fn parse_number(paths: &[PathBuf]) -> Result<u32, String> {
        let text = std::fs::read_to_string(&paths[0]).map_err(|e| e.to_string())?;
        text.trim().parse().map_err(|_| "not a number".to_owned())
    }

    /// `parse_number`, counted; only one test uses it, so the count is that test's.
    fn load_number(paths: &[PathBuf]) -> Result<u32, String> {
        LOADS.fetch_add(1, Ordering::SeqCst);
        parse_number(paths)
    }

    /// Replaces `path` the way Kubernetes and cert-manager do: a new file renamed over the old
    /// one, never a rewrite in place.
    pub(crate) fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn follows_changes_keeps_the_last_good_value_and_retries_only_on_the_next_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "1").unwrap();
        let r = Reloading::new("number", vec![path.clone()], load_number).unwrap();
        let loads = || LOADS.load(Ordering::SeqCst);
        let start = loads();
        assert_eq!(r.current(), 1);
        assert_eq!(loads(), start, "unchanged files are not read again");

        replace(&path, "2");
        assert_eq!(r.current(), 2);

        replace(&path, "garbage");
        assert_eq!(r.current(), 2, "a bad file keeps the last good value");
        let after_bad = loads();
        assert_eq!(r.current(), 2);
        assert_eq!(loads(), after_bad, "a bad file is tried once per change");

        std::fs::remove_file(&path).unwrap();
        assert_eq!(r.current(), 2, "a missing file keeps the last good value");

        replace(&path, "3");
        assert_eq!(r.current(), 3);
    }

    #[test]
    fn a_bad_file_at_start_up_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        assert!(Reloading::new("number", vec![path.clone()], parse_number).is_err());
        std::fs::write(&path, "x").unwrap();
        let err = Reloading::new("number", vec![path], parse_number).unwrap_err();
        assert_eq!(err, "not a number");
    }
}
