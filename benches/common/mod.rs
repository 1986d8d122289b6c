//! What the benchmarks share (a module directory, so that Cargo does not take it for a bench
//! target of its own).

use std::path::Path;

/// Bytes of the files under `dir`: allocated blocks, so that a sparse file counts what it
/// uses (issue 16 item 5: the queue's disk use).
pub fn dir_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}
