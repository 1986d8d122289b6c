//! The queue file system's free space as MAIL checks it (`server.min_free_space`, answered
//! `452 4.3.1` as RFC 5321 4.5.3.1.10 says), read from the file system at most once per
//! [`MAX_AGE`].
//!
//! Issue 16 item 7 (CPU per message): a `statfs` on every MAIL was one system call per message
//! for a figure that moves slowly. A reading at most a second old refuses as well; the commit
//! itself still fails with `452 4.3.1` when the disk really fills up in between (S5).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a reading is used before the file system is asked again.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// Free space of one directory's file system, cached for [`MAX_AGE`].
#[derive(Debug)]
pub struct FreeSpace {
    /// The directory whose file system is read (`server.data_dir`).
    path: PathBuf,
    /// The last successful reading (bytes) and when it was taken; errors are not kept, so
    /// the next MAIL asks again.
    last: Mutex<Option<(Instant, u64)>>,
}

impl FreeSpace {
    /// A cache for the file system that holds `path`; nothing is read yet.
    pub fn new(path: PathBuf) -> FreeSpace {
        FreeSpace {
            path,
            last: Mutex::new(None),
        }
    }

    /// Bytes available to unprivileged users, at most [`MAX_AGE`] old; the error of the
    /// `statvfs` call when the file system cannot be read.
    pub fn available(&self) -> std::io::Result<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, bytes)) = *last {
            if at.elapsed() < MAX_AGE {
                return Ok(bytes);
            }
        }
        let bytes = crate::queue::available_space(&self.path)?;
        *last = Some((Instant::now(), bytes));
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_kept_for_max_age_and_errors_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let space = FreeSpace::new(dir.path().to_path_buf());
        let first = space.available().expect("statvfs");
        let taken = space.last.lock().expect("lock").expect("kept").0;
        assert_eq!(space.available().expect("cached"), first);
        assert_eq!(
            space.last.lock().expect("lock").expect("kept").0,
            taken,
            "the second call within MAX_AGE used the reading"
        );

        let missing = FreeSpace::new(dir.path().join("missing"));
        assert!(
            missing.available().is_err(),
            "a missing directory is an error"
        );
        assert!(
            missing.last.lock().expect("lock").is_none(),
            "errors are not kept"
        );
    }
}
