//! The bytes of a domain list file, as administrators have them, turned into rows of cells
//! (T10; issue 15 item 4). The list arrives as whatever was saved from the published table:
//! UTF-8 with or without a byte order mark, Windows-1252 (what Excel writes as "CSV"), UTF-16
//! with a byte order mark (Excel's "Unicode text", tab separated), CSV with quoted cells that
//! hold separators or line breaks, or an `.xlsx` workbook. What the cells mean is decided in
//! [`super::domain_list`]; this module only finds the cells, and where they were (line or row
//! number, for error messages).
//!
//! Pure code: bytes in, rows out. Every input is bounded by the caller
//! ([`MAX_LIST_BYTES`]) and, for `.xlsx`, by the sizes its ZIP directory declares
//! ([`MAX_XLSX_UNPACKED_BYTES`]) before anything is unpacked.

use calamine::{Data, Reader, Xlsx};
use encoding_rs::{Encoding, WINDOWS_1252};
use std::io::Cursor;

/// The largest list file read (10 MiB). The published list has a few hundred rows (well under
/// 100 kB); anything this large is not a domain list, and refusing it bounds memory and time.
pub const MAX_LIST_BYTES: u64 = 10 * 1024 * 1024;

/// The most an `.xlsx` file may unpack to (sum of the sizes its ZIP directory declares): a
/// small compressed file must not expand into gigabytes of XML (a "ZIP bomb").
pub const MAX_XLSX_UNPACKED_BYTES: u64 = 64 * 1024 * 1024;

/// The signature of a ZIP local file header, which every `.xlsx` file starts with (ECMA-376
/// part 2, Open Packaging Conventions: the package is a ZIP archive). Detected by content, not
/// by the file name: a fetched or renamed file keeps its bytes, not always its extension.
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// One row of cells and where it started in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Line number (text) or row number (`.xlsx`) where the row starts, from 1.
    pub line: usize,
    /// The cells as text, untrimmed.
    pub cells: Vec<String>,
}

/// Why a file's bytes could not be turned into rows at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// A byte order mark names an encoding the rest of the file is not in.
    #[error("starts with a {encoding} byte order mark but is not {encoding} text")]
    BadEncoding {
        /// The encoding the byte order mark names.
        encoding: &'static str,
    },
    /// The file starts like a ZIP archive but is not a workbook calamine can read.
    #[error("looks like an .xlsx workbook (ZIP) but cannot be read as one: {reason}")]
    Xlsx {
        /// What the reader said.
        reason: String,
    },
    /// The workbook would unpack to more than [`MAX_XLSX_UNPACKED_BYTES`].
    #[error("the .xlsx workbook unpacks to more than {max} bytes: not a domain list")]
    XlsxTooLarge {
        /// The limit.
        max: u64,
    },
    /// The CSV reader stopped (cannot happen on decoded text; kept as an error, not a panic).
    #[error("line {line}: not readable as CSV: {reason}")]
    Csv {
        /// Line where the reader stopped.
        line: usize,
        /// What the reader said.
        reason: String,
    },
}

/// The rows of a list file's bytes, in any accepted format: `.xlsx` when the bytes start with
/// the ZIP signature, text (decoded by [`decode_text`], split by [`text_rows`]) otherwise.
pub fn rows(bytes: &[u8]) -> Result<Vec<Row>, FormatError> {
    if bytes.starts_with(ZIP_MAGIC) {
        xlsx_rows(bytes)
    } else {
        text_rows(&decode_text(bytes)?)
    }
}

/// Decodes a text list file to a `String`.
///
/// * A byte order mark decides (UTF-8, UTF-16LE, UTF-16BE): the file says what it is, and bytes
///   that do not fit it are an error, not guessed at.
/// * Without one: valid UTF-8 is taken as UTF-8, anything else as Windows-1252. That order is
///   safe: ASCII reads the same in both; a Windows-1252 file with letters such as `ø` (0xF8) or
///   `å` (0xE5) is practically never valid UTF-8, because UTF-8 needs every byte from 0x80 up
///   to form a lead byte followed by exactly the right number of 0x80–0xBF continuation bytes
///   (in Windows-1252 those would read as a letter followed by symbols such as `Ã¸`, not
///   names). The reverse order would be wrong: every byte sequence decodes as Windows-1252, so
///   a UTF-8 file would silently turn into mojibake.
pub fn decode_text(bytes: &[u8]) -> Result<String, FormatError> {
    if let Some((encoding, bom_len)) = Encoding::for_bom(bytes) {
        let body = bytes.get(bom_len..).unwrap_or_default();
        let (text, had_errors) = encoding.decode_without_bom_handling(body);
        if had_errors {
            return Err(FormatError::BadEncoding {
                encoding: encoding.name(),
            });
        }
        return Ok(text.into_owned());
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_owned()),
        // Windows-1252 maps every byte to a character (WHATWG Encoding Standard), so this
        // decoding has no errors to report.
        Err(_) => Ok(WINDOWS_1252
            .decode_without_bom_handling(bytes)
            .0
            .into_owned()),
    }
}

/// The rows of decoded CSV (or one-domain-per-line) text. The separator (tab, `;` or `,`) is
/// taken from the first line that is neither empty nor a `#` comment (the header row when there
/// is one); double-quoted cells may hold separators, line breaks and `""` quotes (RFC 4180 2).
/// Lines starting with `#` are comments.
pub fn text_rows(text: &str) -> Result<Vec<Row>, FormatError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter_of(text))
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut lines = LineCounter::new(text);
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(rows),
            Ok(true) => rows.push(Row {
                line: lines.line_at(record.position().map_or(0, |p| p.byte())),
                cells: record.iter().map(unquote).collect(),
            }),
            Err(e) => {
                return Err(FormatError::Csv {
                    line: lines.line_at(e.position().map_or(0, |p| p.byte())),
                    reason: e.to_string(),
                });
            }
        }
    }
}

/// Line numbers from byte offsets, counting every line feed, also those inside quoted cells
/// (the csv reader's own line count does not: a cell over two lines would shift every later
/// line number and point the administrator at the wrong line). Offsets must not decrease.
struct LineCounter<'a> {
    text: &'a [u8],
    /// Offset up to which line feeds are counted.
    offset: usize,
    /// Line feeds before `offset`.
    feeds: usize,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str) -> LineCounter<'a> {
        LineCounter {
            text: text.as_bytes(),
            offset: 0,
            feeds: 0,
        }
    }

    /// The line (from 1) of the record the csv reader says starts at byte `offset`. The reader
    /// may give the offset of the previous record's line end (it ends a record at the `\r` of a
    /// CRLF), so line end bytes at `offset` are skipped first.
    fn line_at(&mut self, offset: u64) -> usize {
        let mut offset = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .clamp(self.offset, self.text.len());
        while matches!(self.text.get(offset), Some(b'\r' | b'\n')) {
            offset += 1;
        }
        let span = self.text.get(self.offset..offset).unwrap_or_default();
        self.feeds += memchr::memchr_iter(b'\n', span).count();
        self.offset = offset;
        self.feeds + 1
    }
}

/// The separator of a CSV text, from its first significant line. Tab first (Excel's "Unicode
/// text" and "Text (tab delimited)": cells may then hold `;` and `,`), then `;` (the published
/// list; a `,` may then separate several domains in one cell), then `,`. Separators inside
/// double quotes do not count. A line with none of them is a one-column (one domain per line)
/// file: any separator reads it the same.
fn delimiter_of(text: &str) -> u8 {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    let mut quoted = false;
    let (mut tab, mut semicolon, mut comma) = (false, false, false);
    for c in first.chars() {
        match c {
            '"' => quoted = !quoted,
            '\t' if !quoted => tab = true,
            ';' if !quoted => semicolon = true,
            ',' if !quoted => comma = true,
            _ => {}
        }
    }
    if tab {
        b'\t'
    } else if semicolon || !comma {
        b';'
    } else {
        b','
    }
}

/// A cell written as `; "a, b"` (a space before the opening quote) is not quoted for CSV
/// (RFC 4180 2: quotes open a field only at its start); hand-edited lists do that, so such a
/// cell is unquoted here.
fn unquote(cell: &str) -> String {
    // A cell that starts with its quote was unquoted by the reader already: quotes still in
    // it are the cell's own text.
    if !cell.starts_with(char::is_whitespace) {
        return cell.to_string();
    }
    let trimmed = cell.trim();
    match trimmed
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        Some(inner) => inner.replace("\"\"", "\""),
        None => cell.to_string(),
    }
}

/// The rows of the first non-empty worksheet of an `.xlsx` workbook. Row numbers are the
/// sheet's own (as Excel shows them), so error messages point at the right row.
fn xlsx_rows(bytes: &[u8]) -> Result<Vec<Row>, FormatError> {
    check_unpacked_size(bytes)?;
    let xlsx_error = |e: calamine::XlsxError| FormatError::Xlsx {
        reason: e.to_string(),
    };
    let mut book = Xlsx::new(Cursor::new(bytes)).map_err(xlsx_error)?;
    for name in book.sheet_names() {
        let range = book.worksheet_range(&name).map_err(xlsx_error)?;
        let Some((first_row, first_col)) = range.start() else {
            continue;
        };
        let lead = usize::try_from(first_col).unwrap_or(0);
        let first_row = usize::try_from(first_row).unwrap_or(0);
        let rows = range
            .rows()
            .enumerate()
            .map(|(i, cells)| Row {
                line: first_row + i + 1,
                // Columns keep their place: column A is cell 0 even when the sheet's used
                // range starts further right.
                cells: std::iter::repeat_n(String::new(), lead)
                    .chain(cells.iter().map(cell_text))
                    .collect(),
            })
            .collect();
        return Ok(rows);
    }
    Ok(Vec::new())
}

/// A worksheet cell as the text a CSV export would have: whole numbers without a fraction
/// (organisation numbers are stored as numbers), dates as `YYYY-MM-DD` ("Dato innmeldt" as a
/// date cell).
fn cell_text(cell: &Data) -> String {
    match cell {
        Data::Empty => String::new(),
        Data::String(s) => s.clone(),
        Data::Int(i) => i.to_string(),
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
        Data::Float(f) => f.to_string(),
        Data::Bool(b) => b.to_string(),
        Data::DateTime(dt) if dt.is_datetime() => {
            let (y, m, d, ..) = dt.to_ymd_hms_milli();
            format!("{y:04}-{m:02}-{d:02}")
        }
        Data::DateTime(dt) => dt.as_f64().to_string(),
        Data::DateTimeIso(s) => s.get(..10).unwrap_or(s).to_string(),
        Data::DurationIso(s) => s.clone(),
        Data::Error(e) => format!("#{e}"),
    }
}

/// Refuses a ZIP archive whose directory declares more than [`MAX_XLSX_UNPACKED_BYTES`] in
/// total, or that has no readable directory (PKWARE APPNOTE 4.3.16 end of central directory,
/// 4.3.12 central directory headers). ZIP64 archives (sizes of 0xFFFFFFFF) are refused: a
/// domain list never needs them.
fn check_unpacked_size(bytes: &[u8]) -> Result<(), FormatError> {
    const EOCD: &[u8] = b"PK\x05\x06";
    const CENTRAL: &[u8] = b"PK\x01\x02";
    let bad = |reason: &str| FormatError::Xlsx {
        reason: reason.to_string(),
    };
    let too_large = FormatError::XlsxTooLarge {
        max: MAX_XLSX_UNPACKED_BYTES,
    };
    // The end record is 22 bytes plus a comment of at most 65,535 bytes, at the very end.
    let search_from = bytes.len().saturating_sub(22 + 65_535);
    let eocd = bytes
        .get(search_from..)
        .and_then(|tail| tail.windows(4).rposition(|w| w == EOCD))
        .map(|i| search_from + i)
        .ok_or_else(|| bad("no ZIP end of central directory record"))?;
    let u16_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 2)?;
        Some(usize::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let u32_at = |at: usize| -> Option<u64> {
        let b = bytes.get(at..at + 4)?;
        Some(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    };
    let entries = u16_at(eocd + 10).ok_or_else(|| bad("truncated ZIP end record"))?;
    let mut at = u32_at(eocd + 16)
        .and_then(|o| usize::try_from(o).ok())
        .ok_or_else(|| bad("truncated ZIP end record"))?;
    let mut total: u64 = 0;
    for _ in 0..entries {
        if bytes.get(at..at + 4) != Some(CENTRAL) {
            return Err(bad("damaged ZIP central directory"));
        }
        let size = u32_at(at + 24).ok_or_else(|| bad("damaged ZIP central directory"))?;
        if size == 0xFFFF_FFFF {
            return Err(too_large);
        }
        total = total.saturating_add(size);
        if total > MAX_XLSX_UNPACKED_BYTES {
            return Err(too_large);
        }
        let name = u16_at(at + 28).ok_or_else(|| bad("damaged ZIP central directory"))?;
        let extra = u16_at(at + 30).ok_or_else(|| bad("damaged ZIP central directory"))?;
        let comment = u16_at(at + 32).ok_or_else(|| bad("damaged ZIP central directory"))?;
        at += 46 + name + extra + comment;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_separator_comes_from_the_first_significant_line() {
        assert_eq!(delimiter_of("# comment; with, separators\na;b,c\n"), b';');
        assert_eq!(delimiter_of("a,\"b;c\",d\n"), b',');
        assert_eq!(delimiter_of("a\tb;c,d\n"), b'\t');
        assert_eq!(delimiter_of("bits.no\nfno.no\n"), b';');
    }

    #[test]
    fn windows_1252_is_decoded_when_the_bytes_are_not_utf8() {
        // "Blåbær" in Windows-1252: å = 0xE5, æ = 0xE6.
        assert_eq!(decode_text(b"Bl\xe5b\xe6r").unwrap(), "Blåbær");
        assert_eq!(decode_text("Blåbær".as_bytes()).unwrap(), "Blåbær");
        assert_eq!(decode_text(b"\xef\xbb\xbfbits.no").unwrap(), "bits.no");
        // UTF-16LE with its byte order mark.
        assert_eq!(
            decode_text(b"\xff\xfea\x00.\x00n\x00o\x00").unwrap(),
            "a.no"
        );
        assert!(matches!(
            decode_text(b"\xef\xbb\xbf\xff"),
            Err(FormatError::BadEncoding { .. })
        ));
    }

    #[test]
    fn quoted_cells_keep_separators_and_line_breaks() {
        let rows = text_rows("a;\"b;c\nd\";e\nf; \"g, h\";i\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].cells, vec!["a", "b;c\nd", "e"]);
        assert_eq!(rows[1].line, 3);
        assert_eq!(rows[1].cells[1], "g, h");
        // CRLF line ends, a cell over two lines, an empty line: file line numbers all the same.
        let rows = text_rows("h;a\r\n\"B\r\nS\";1\r\n\r\nF;2\r\n").unwrap();
        let lines: Vec<usize> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![1, 2, 5]);
    }

    #[test]
    fn a_zip_without_a_directory_is_refused_not_unpacked() {
        assert!(matches!(
            rows(b"PK\x03\x04garbage"),
            Err(FormatError::Xlsx { .. })
        ));
    }
}
