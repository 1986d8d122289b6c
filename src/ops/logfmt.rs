//! The fields of text log lines in one rule (issue 14 item 3: lines that tools can read):
//! `key=value` when the value is one plain word, `key="…"` (escaped) when it has spaces,
//! quotes, `=` or is empty — the logfmt convention journald exporters and log shippers parse.
//!
//! tracing-subscriber's default field formatter quotes `&str` values but writes `%Display`
//! values bare, so the same kind of value was quoted in one line and not in the next, and free
//! text such as an SMTP reply (`reply=250 2.0.0 ok`) could not be split from the next field.
//! The event's message stays first and unquoted, as before.

use std::fmt::{self, Debug};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

/// The field formatter for `log.format = "text"`: pass to
/// `tracing_subscriber::fmt().fmt_fields(Logfmt)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logfmt;

impl<'a> MakeVisitor<Writer<'a>> for Logfmt {
    type Visitor = LogfmtVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> LogfmtVisitor<'a> {
        LogfmtVisitor {
            writer: target,
            first: true,
            result: Ok(()),
        }
    }
}

/// Writes one event's (or span's) fields by the module's rule.
pub struct LogfmtVisitor<'a> {
    writer: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl LogfmtVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{value}")
        } else {
            write!(self.writer, "{separator}{}=", field.name()).and_then(|()| {
                if needs_quotes(value) {
                    write!(self.writer, "{value:?}")
                } else {
                    self.writer.write_str(value)
                }
            })
        };
    }
}

/// True when `value` would not read back as one plain word.
fn needs_quotes(value: &str) -> bool {
    value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '=' | '\\'))
}

impl Visit for LogfmtVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        // `%value` arrives here as its Display text, the message as its format arguments.
        let text = format!("{value:?}");
        self.write(field, &text);
    }
}

impl VisitOutput<fmt::Result> for LogfmtVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for LogfmtVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_words_bare_free_text_quoted_whatever_the_field_type() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .fmt_fields(Logfmt)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let error = std::io::Error::other("connection refused (os error 111)");
            tracing::info!(
                queue_id = "0123456789ABCD",
                tls = %"TLSv1.3",
                reply = "250 2.0.0 ok stored",
                error = %error,
                from = "",
                message_id = %"<a=b@example.no>",
                nrcpt = 2,
                "delivered"
            );
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.trim(),
            "INFO delivered queue_id=0123456789ABCD tls=TLSv1.3 reply=\"250 2.0.0 ok stored\" \
             error=\"connection refused (os error 111)\" from=\"\" \
             message_id=\"<a=b@example.no>\" nrcpt=2"
        );
    }
}
