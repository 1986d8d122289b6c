//! How counts read in listings, reports and the CLI's answers: `1 message`, `2 messages`.
//! Shared by the admin API's renderings, the operations' texts, the configuration summary
//! and the CLI, so that each says a count the same way.

/// `1 message`, `2 messages`: listings and the CLI's reports read as sentences (`noun` in the
/// singular; the plural adds an `s`).
pub fn counted(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
