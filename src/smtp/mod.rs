//! Pure SMTP protocol code, no I/O: command parsing, replies, the DATA decoder and the EHLO
//! capability list. Shared by the server sessions and (replies) the delivery client.

pub mod address;
pub mod command;
pub mod data;
pub mod headers;
pub mod reply;

pub use address::{Address, ForwardPath, ReversePath};
pub use command::{parse_command, Command, CommandError};
pub use reply::{EnhancedStatus, Reply};

/// What the server offers in its EHLO reply.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// The `SIZE` limit announced, in octets (RFC 1870).
    pub size: u64,
    /// Offer `STARTTLS` (RFC 3207).
    pub starttls: bool,
    /// Offer `REQUIRETLS` (RFC 8689).
    pub requiretls: bool,
    /// Offer `CHUNKING`, i.e. BDAT (RFC 3030).
    pub chunking: bool,
}

impl Capabilities {
    /// The multi-line 250 reply to EHLO (RFC 5321 4.1.1.1), one extension per line.
    pub fn ehlo_reply(&self, hostname: &str, client: &str) -> Reply {
        let mut lines = vec![format!("{hostname} greets {client}")];
        lines.push("PIPELINING".into());
        lines.push(format!("SIZE {}", self.size));
        lines.push("8BITMIME".into());
        lines.push("SMTPUTF8".into());
        lines.push("ENHANCEDSTATUSCODES".into());
        lines.push("DSN".into());
        if self.starttls {
            lines.push("STARTTLS".into());
        }
        if self.requiretls {
            lines.push("REQUIRETLS".into());
        }
        if self.chunking {
            lines.push("CHUNKING".into());
        }
        // Enhanced codes are not written on EHLO lines: RFC 2034 3 applies them to replies,
        // and keyword lines must start with the keyword for clients to parse them.
        Reply {
            code: 250,
            enhanced: None,
            text: lines.join("\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_lists_extensions_one_per_line() {
        let caps = Capabilities {
            size: 1000,
            starttls: true,
            requiretls: false,
            chunking: false,
        };
        let mut out = Vec::new();
        caps.ehlo_reply("mx.test", "client").write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("250-mx.test greets client\r\n250-PIPELINING\r\n"));
        assert!(text.contains("250-SIZE 1000\r\n"));
        assert!(text.ends_with("250 STARTTLS\r\n"));
        assert!(!text.contains("REQUIRETLS"));
    }
}
