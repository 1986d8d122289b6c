//! The *Domeneliste for Tvungen TLS* (T10): the published list of domains that mail must only
//! reach over validated TLS.
//!
//! Accepted formats (design.md, "Domain list format"; issue 15 item 4):
//! * the Bits list as CSV, `;`, `,` or tab separated, with or without its header row
//!   `Selskapsnavn; Organisasjonsnummer; Domene med tvungen TLS; Dato innmeldt; Støtte for krav
//!   5.2.4` (names matched case- and accent-insensitively, other columns ignored); a domain
//!   cell may name several domains (separated by spaces, `,` or `;` inside quotes);
//! * the same table saved as `.xlsx`;
//! * one domain per line;
//! * as text in UTF-8 (with or without a byte order mark), UTF-16 with a byte order mark, or
//!   Windows-1252 ([`super::list_file`] finds the cells, this module what they mean).
//!
//! Lines starting with `#` and empty lines are ignored. Names are normalised (case, trailing
//! dot, IDNA → A-label). A file with any bad row is refused whole, with every bad line listed,
//! so a damaged file can never silently shorten the list; the caller keeps the old list.

use super::list_file::{self, FormatError, Row};
use crate::domain::Domain;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;

pub use super::list_file::MAX_LIST_BYTES;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// One listed domain and what the list says about its organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedDomain {
    /// The listed domain (one row may list several; each gets its own entry).
    pub domain: Domain,
    /// "Selskapsnavn"; empty when the list has no such column (one domain per line).
    pub company: String,
    /// "Organisasjonsnummer" as written; empty when the list has no such column.
    pub org_number: String,
    /// "Dato innmeldt" as days since 1970-01-01.
    pub joined: Option<i64>,
    /// "Støtte for krav 5.2.4": the organisation refuses plaintext mail itself.
    pub supports_5_2_4: Option<bool>,
}

/// One entry of the list, as `GET /domains/entries` answers it and `tlsgate domains list`
/// prints it (the same shape whether the relay or the file was asked).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DomainEntry {
    /// The listed domain.
    pub domain: String,
    /// "Selskapsnavn"; empty when the list has no such column.
    pub company: String,
    /// "Organisasjonsnummer" as written; empty when the list has no such column.
    pub org_number: String,
    /// "Dato innmeldt" as `YYYY-MM-DD`.
    pub joined: Option<String>,
    /// "Dato innmeldt" as days since 1970-01-01 (as the list keeps it).
    pub joined_days_since_epoch: Option<i64>,
    /// "Støtte for krav 5.2.4".
    pub supports_5_2_4: Option<bool>,
}

impl DomainEntry {
    /// The entry for one listed domain.
    pub fn of(listed: &ListedDomain) -> DomainEntry {
        DomainEntry {
            domain: listed.domain.as_str().to_string(),
            company: listed.company.clone(),
            org_number: listed.org_number.clone(),
            joined: listed.joined.and_then(crate::datetime::date_of_days),
            joined_days_since_epoch: listed.joined,
            supports_5_2_4: listed.supports_5_2_4,
        }
    }

    /// Every entry of `list`, in the list's order.
    pub fn all(list: &DomainList) -> Vec<DomainEntry> {
        list.iter().map(DomainEntry::of).collect()
    }
}

/// A parsed list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainList {
    domains: BTreeMap<Domain, ListedDomain>,
}

/// One refused line of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// Line number in the file, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Why a list file was refused as a whole; the list in force stays (T10).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// The file could not be read.
    #[error("{path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    /// The file is in no format the list can be read from (a damaged workbook, text that its
    /// byte order mark does not describe).
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
    /// Some lines are bad; every bad line is reported (the message shows the first ten).
    #[error("{path}: {} bad line(s): {}", .errors.len(), format_errors(.errors))]
    Parse {
        path: String,
        errors: Vec<LineError>,
    },
    #[error(
        "{path}: the list names no domain (refused: an empty list would turn tvungen TLS off)"
    )]
    /// The file names no domain.
    Empty { path: String },
}

fn format_errors(errors: &[LineError]) -> String {
    let shown: Vec<String> = errors
        .iter()
        .take(10)
        .map(|e| format!("line {}: {}", e.line, e.reason))
        .collect();
    let more = errors.len().saturating_sub(10);
    if more > 0 {
        format!("{}; and {more} more", shown.join("; "))
    } else {
        shown.join("; ")
    }
}

impl DomainList {
    /// Is exactly this domain on the list? (No subdomain matching: the list names domains.)
    pub fn is_listed(&self, domain: &Domain) -> bool {
        self.domains.contains_key(domain)
    }

    /// The list's entry for exactly this domain.
    pub fn get(&self, domain: &Domain) -> Option<&ListedDomain> {
        self.domains.get(domain)
    }

    /// Number of listed domains.
    pub fn len(&self) -> usize {
        self.domains.len()
    }

    /// No domain listed.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Every entry, in domain order.
    pub fn iter(&self) -> impl Iterator<Item = &ListedDomain> {
        self.domains.values()
    }

    /// The newest "Dato innmeldt" (days since the epoch).
    pub fn newest_joined(&self) -> Option<i64> {
        self.domains.values().filter_map(|d| d.joined).max()
    }

    /// Parses list text (already decoded; see [`DomainList::parse_bytes`] for files);
    /// `Err` lists every bad line.
    pub fn parse(text: &str) -> Result<DomainList, Vec<LineError>> {
        let rows = list_file::text_rows(text).map_err(|e| vec![format_line_error(e)])?;
        DomainList::from_rows(&rows)
    }

    /// Parses a list file's bytes in any accepted format (`.xlsx`; CSV or one domain per line
    /// in UTF-8, UTF-16 with a byte order mark, or Windows-1252: [`list_file::rows`]).
    pub fn parse_bytes(bytes: &[u8]) -> Result<DomainList, Vec<LineError>> {
        let rows = list_file::rows(bytes).map_err(|e| vec![format_line_error(e)])?;
        DomainList::from_rows(&rows)
    }

    /// The list named by rows of cells. The first row that is not empty nor a `#` comment is
    /// the header when it names a column (matched case- and accent-insensitively, see
    /// [`fold`]); without a header the columns are in the published order, or a row with one
    /// non-empty cell is one domain. Columns the list does not know are ignored.
    fn from_rows(rows: &[Row]) -> Result<DomainList, Vec<LineError>> {
        let mut list = DomainList::default();
        let mut errors = Vec::new();
        let mut columns: Option<Columns> = None;
        let mut header_seen = false;
        for row in rows {
            let line_no = row.line;
            let cells: Vec<&str> = row.cells.iter().map(|c| c.trim()).collect();
            let filled: Vec<&str> = cells.iter().copied().filter(|c| !c.is_empty()).collect();
            let Some(first) = filled.first() else {
                continue;
            };
            if first.starts_with('#') {
                continue;
            }
            if !header_seen && is_header(&cells) {
                header_seen = true;
                columns = Some(Columns::from_header(&cells));
                continue;
            }
            header_seen = true;
            let single_domain = filled.len() == 1 && columns.is_none();
            let cell = |i: Option<usize>| {
                i.and_then(|i| cells.get(i))
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            };
            let cols = columns.unwrap_or_else(Columns::bits_order);
            let domain_cell = if single_domain {
                first.to_string()
            } else {
                cell(Some(cols.domain))
            };
            if domain_cell.is_empty() {
                errors.push(LineError {
                    line: line_no,
                    reason: "no domain in the \"Domene med tvungen TLS\" column".into(),
                });
                continue;
            }
            let (company, org_number, joined_text, supports_text) = if single_domain {
                Default::default()
            } else {
                (
                    cell(cols.company),
                    cell(cols.org_number),
                    cell(cols.joined),
                    cell(cols.supports),
                )
            };
            let joined = if joined_text.is_empty() {
                None
            } else {
                match parse_date(&joined_text) {
                    Some(days) => Some(days),
                    None => {
                        errors.push(LineError {
                            line: line_no,
                            reason: format!("{joined_text:?} is not a date (YYYY-MM-DD)"),
                        });
                        continue;
                    }
                }
            };
            let supports = match supports_text.to_lowercase().as_str() {
                "ja" | "yes" | "j" | "y" | "true" => Some(true),
                "nei" | "no" | "n" | "false" => Some(false),
                _ => None,
            };
            for name in domain_cell
                .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
                .filter(|s| !s.is_empty())
            {
                match Domain::parse(name) {
                    Ok(domain) if domain.as_str().contains('.') => {
                        list.domains.insert(
                            domain.clone(),
                            ListedDomain {
                                domain,
                                company: company.clone(),
                                org_number: org_number.clone(),
                                joined,
                                supports_5_2_4: supports,
                            },
                        );
                    }
                    Ok(_) => errors.push(LineError {
                        line: line_no,
                        reason: format!("{name:?} is not a fully qualified domain"),
                    }),
                    Err(e) => errors.push(LineError {
                        line: line_no,
                        reason: format!("{name:?} is not a domain: {e}"),
                    }),
                }
            }
        }
        if errors.is_empty() {
            Ok(list)
        } else {
            Err(errors)
        }
    }

    /// Reads and parses a list file (any accepted format, detected from its content).
    pub fn load(path: &Path) -> Result<DomainList, ListError> {
        ListFile::load(path).map(|file| file.list)
    }
}

/// A list file read whole: the list it names and the SHA-256 of its bytes (the evidence of
/// which file was in force, for the audit log and the compliance report; S1, T7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFile {
    /// The list the file names (never empty).
    pub list: DomainList,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
}

impl ListFile {
    /// Reads `path` (a regular file of at most [`MAX_LIST_BYTES`]) and parses it; refuses a
    /// file with any bad row, or naming no domain.
    pub fn load(path: &Path) -> Result<ListFile, ListError> {
        let shown = path.display().to_string();
        let bytes = read_bounded(path).map_err(|reason| ListError::Read {
            path: shown.clone(),
            reason,
        })?;
        let sha256 = sha256_hex(&bytes);
        let rows = list_file::rows(&bytes).map_err(|e| ListError::Format {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let list = DomainList::from_rows(&rows).map_err(|errors| ListError::Parse {
            path: shown.clone(),
            errors,
        })?;
        if list.is_empty() {
            return Err(ListError::Empty { path: shown });
        }
        Ok(ListFile { list, sha256 })
    }
}

/// Reads a whole regular file of at most [`MAX_LIST_BYTES`]. Not a regular file (a FIFO
/// would block the reader forever, a directory cannot be read) and too large are refused.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let too_large = || format!("larger than {MAX_LIST_BYTES} bytes: not a domain list");
    if meta.len() > MAX_LIST_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    // The file may grow after the size check: read at most one byte past the limit.
    file.take(MAX_LIST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_LIST_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A file-level format error reported as the line it happened on (line 1 when the whole file
/// is unreadable), so every refusal names a place.
fn format_line_error(e: FormatError) -> LineError {
    let line = match &e {
        FormatError::Csv { line, .. } => *line,
        _ => 1,
    };
    LineError {
        line,
        reason: e.to_string(),
    }
}

/// Which column holds what.
#[derive(Debug, Clone, Copy)]
struct Columns {
    company: Option<usize>,
    org_number: Option<usize>,
    domain: usize,
    joined: Option<usize>,
    supports: Option<usize>,
}

impl Columns {
    fn bits_order() -> Columns {
        Columns {
            company: Some(0),
            org_number: Some(1),
            domain: 2,
            joined: Some(3),
            supports: Some(4),
        }
    }

    /// Columns named by a header row. Names are matched after [`fold`], so "Dato innmeldt",
    /// "DATO INNMELDT" and "Støtte"/"Stotte"/"STØTTE" all match; the first column that matches
    /// wins, extra columns are ignored.
    fn from_header(cells: &[&str]) -> Columns {
        let folded: Vec<String> = cells.iter().map(|c| fold(c)).collect();
        let find = |words: &[&str]| {
            folded
                .iter()
                .position(|c| words.iter().any(|w| c.contains(w)))
        };
        Columns {
            company: find(&["selskap", "company", "navn"]),
            org_number: find(&["organisasjonsnummer", "org"]),
            domain: find(&["domene", "domain"]).unwrap_or(0),
            joined: find(&["dato", "date", "innmeldt"]),
            supports: find(&["5.2.4", "stotte", "support"]),
        }
    }
}

fn is_header(cells: &[&str]) -> bool {
    cells.iter().any(|c| {
        let c = fold(c);
        c.contains("domene") || c.contains("selskapsnavn") || c == "domain"
    })
}

/// Lowercase without diacritics, for matching header names: the Latin-1 letters of the
/// Scandinavian, German and French alphabets map to their base letter (`ø` → `o`, `å` → `a`,
/// `æ` → `ae`, `é` → `e`), and combining marks (U+0300–U+036F, what a decomposed "å" from a Mac
/// carries) are dropped. A full Unicode normalisation is not needed: header names are a few
/// Norwegian and English words, and no normalisation crate is in the tree.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.trim().chars().flat_map(char::to_lowercase) {
        match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => out.push('a'),
            'æ' => out.push_str("ae"),
            'ç' => out.push('c'),
            'è' | 'é' | 'ê' | 'ë' => out.push('e'),
            'ì' | 'í' | 'î' | 'ï' => out.push('i'),
            'ñ' => out.push('n'),
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' => out.push('o'),
            'ù' | 'ú' | 'û' | 'ü' => out.push('u'),
            'ý' | 'ÿ' => out.push('y'),
            'ß' => out.push_str("ss"),
            '\u{0300}'..='\u{036f}' => {}
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD` or `DD.MM.YYYY` → days since 1970-01-01; `None` for anything else, a year
/// outside 1970..=9999 or a day the calendar does not have.
pub fn parse_date(text: &str) -> Option<i64> {
    let (y, m, d) = if let Some((y, rest)) = text.split_once('-') {
        let (m, d) = rest.split_once('-')?;
        (y, m, d)
    } else {
        let (d, rest) = text.split_once('.')?;
        let (m, y) = rest.split_once('.')?;
        (y, m, d)
    };
    let (y, m, d): (i32, u8, u8) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1970..=9999).contains(&y) {
        return None;
    }
    crate::datetime::days_since_epoch(y, m, d)
}

/// How the list's age is measured (`domain_list.age_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeFrom {
    /// The file's modification time.
    File,
    /// The newest "Dato innmeldt" in the list.
    NewestEntry,
}

/// The list in force, shared by sessions, delivery and the CLI; replaced whole on reload.
pub struct DomainListHandle {
    path: Option<PathBuf>,
    current: RwLock<Loaded>,
    /// Modification time of a file version the change check refused: not read again until
    /// the file changes (a broken file is refused, logged and audited once, not every
    /// `check_interval`).
    refused: std::sync::Mutex<Option<SystemTime>>,
}

#[derive(Clone)]
struct Loaded {
    list: Arc<DomainList>,
    modified: Option<SystemTime>,
    /// SHA-256 of the file the list was read from; `None` without a file.
    sha256: Option<String>,
}

/// What a successful reload did; its `Display` is the admin API's `result` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The list in force stays (the file holds the same list, or did not change).
    Unchanged {
        /// Domains in the list in force.
        domains: usize,
        /// SHA-256 of the list file in force; `None` when no file is configured.
        sha256: Option<String>,
    },
    /// A different list is in force now.
    Replaced {
        /// Domains in the list before.
        old: usize,
        /// Domains in the list now.
        new: usize,
        /// SHA-256 of the file now in force (lowercase hex).
        sha256: String,
        /// Domains listed now and not before, in domain order.
        added: Vec<Domain>,
        /// Domains listed before and not now, in domain order.
        removed: Vec<Domain>,
    },
}

impl fmt::Display for Reloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reloaded::Unchanged { domains, .. } => write!(f, "unchanged: {domains} domains"),
            Reloaded::Replaced {
                old,
                new,
                added,
                removed,
                ..
            } => write!(
                f,
                "reloaded: {old} → {new} domains ({} added, {} removed)",
                added.len(),
                removed.len()
            ),
        }
    }
}

impl fmt::Debug for DomainListHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainListHandle")
            .field("path", &self.path)
            .field("domains", &self.current().len())
            .finish()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl DomainListHandle {
    /// Loads the list at `path` (none configured: an empty list).
    pub fn load(path: Option<&Path>) -> Result<DomainListHandle, ListError> {
        let loaded = match path {
            Some(p) => {
                let file = ListFile::load(p)?;
                Loaded {
                    list: Arc::new(file.list),
                    modified: modified(p),
                    sha256: Some(file.sha256),
                }
            }
            None => Loaded {
                list: Arc::new(DomainList::default()),
                modified: None,
                sha256: None,
            },
        };
        Ok(DomainListHandle {
            path: path.map(Path::to_path_buf),
            current: RwLock::new(loaded),
            refused: std::sync::Mutex::new(None),
        })
    }

    /// A handle holding a given list (tests, `probe`).
    pub fn fixed(list: DomainList) -> DomainListHandle {
        DomainListHandle {
            path: None,
            current: RwLock::new(Loaded {
                list: Arc::new(list),
                modified: None,
                sha256: None,
            }),
            refused: std::sync::Mutex::new(None),
        }
    }

    /// The list in force now. Cheap: sessions take one per check.
    pub fn current(&self) -> Arc<DomainList> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .list
            .clone()
    }

    /// SHA-256 (lowercase hex) of the list file in force; `None` without a file.
    pub fn sha256(&self) -> Option<String> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .sha256
            .clone()
    }

    /// The list file; `None` when no list is configured (or for [`DomainListHandle::fixed`]).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reloads the file. On error the old list stays in force.
    pub fn reload(&self) -> Result<Reloaded, ListError> {
        let Some(path) = &self.path else {
            return Ok(self.unchanged());
        };
        let ListFile { list, sha256 } = ListFile::load(path)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        current.modified = modified(path);
        current.sha256 = Some(sha256.clone());
        if *current.list == list {
            return Ok(Reloaded::Unchanged {
                domains: list.len(),
                sha256: Some(sha256),
            });
        }
        let added = list
            .domains
            .keys()
            .filter(|d| !current.list.domains.contains_key(*d))
            .cloned()
            .collect();
        let removed = current
            .list
            .domains
            .keys()
            .filter(|d| !list.domains.contains_key(*d))
            .cloned()
            .collect();
        let old = current.list.len();
        let new = list.len();
        current.list = Arc::new(list);
        Ok(Reloaded::Replaced {
            old,
            new,
            sha256,
            added,
            removed,
        })
    }

    /// Reloads when the file's modification time changed since the last load.
    pub fn reload_if_changed(&self) -> Result<Reloaded, ListError> {
        let Some(path) = &self.path else {
            return Ok(self.unchanged());
        };
        let seen = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .modified;
        let now = modified(path);
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if now == seen || (now.is_some() && now == *refused) {
            return Ok(self.unchanged());
        }
        let result = self.reload();
        *refused = if result.is_err() { now } else { None };
        result
    }

    fn unchanged(&self) -> Reloaded {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        Reloaded::Unchanged {
            domains: current.list.len(),
            sha256: current.sha256.clone(),
        }
    }

    /// Age of the list in whole days, measured as configured.
    pub fn age_days(&self, from: AgeFrom, now: SystemTime) -> Option<i64> {
        self.age_seconds(from, now).map(|s| s.div_euclid(86_400))
    }

    /// Age of the list in seconds, measured as configured: since the file's modification time,
    /// or since midnight UTC of the newest entry's join date. `None` when that time is unknown.
    pub fn age_seconds(&self, from: AgeFrom, now: SystemTime) -> Option<i64> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        let now_secs = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs() as i64;
        match from {
            AgeFrom::File => {
                let m = current.modified?;
                Some(now.duration_since(m).map_or(0, |d| d.as_secs() as i64))
            }
            AgeFrom::NewestEntry => current.list.newest_joined().map(|d| now_secs - d * 86_400),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    #[test]
    fn parses_the_bits_format_with_header() {
        let text = "Selskapsnavn; Organisasjonsnummer; Domene med tvungen TLS; Dato innmeldt; Støtte for krav 5.2.4\n\
                    Bits AS; 916960190; bits.no; 2017-02-01; Nei\n\
                    Finans Norge; ; FNO.no. finansnorge.no; 01.02.2017; Ja\n\
                    # a comment\n\
                    \n\
                    Blåbær Bank; 123; \"blåbær.no, bank.example\"; 2024-05-06; \n";
        let list = DomainList::parse(text).unwrap();
        assert_eq!(list.len(), 5);
        let bits = list.get(&d("bits.no")).unwrap();
        assert_eq!(bits.company, "Bits AS");
        assert_eq!(bits.org_number, "916960190");
        assert_eq!(bits.supports_5_2_4, Some(false));
        assert_eq!(bits.joined, parse_date("2017-02-01"));
        assert!(list.is_listed(&d("fno.no")));
        assert!(list.is_listed(&d("finansnorge.no")));
        assert_eq!(list.get(&d("fno.no")).unwrap().supports_5_2_4, Some(true));
        // IDNA: listed under the A-label.
        assert!(list.is_listed(&d("blåbær.no")));
        assert!(d("blåbær.no").as_str().starts_with("xn--"));
        assert!(list.is_listed(&d("bank.example")));
        assert_eq!(list.newest_joined(), parse_date("2024-05-06"));
    }

    #[test]
    fn parses_comma_csv_without_header_and_plain_lines() {
        let csv = "Bits AS,916960190,bits.no,2017-02-01,Nei\n";
        assert!(DomainList::parse(csv).unwrap().is_listed(&d("bits.no")));
        let plain = "bits.no\nFNO.NO.\n";
        let list = DomainList::parse(plain).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.is_listed(&d("fno.no")));
    }

    #[test]
    fn bad_rows_are_refused_with_line_numbers() {
        let text = "Selskapsnavn;Organisasjonsnummer;Domene med tvungen TLS;Dato innmeldt\n\
                    Ok AS;1;ok.no;2020-01-01\n\
                    Bad AS;2;not a domain!;2020-01-01\n\
                    Worse AS;3;worse.no;yesterday\n\
                    Empty AS;4;;2020-01-01\n";
        let errors = DomainList::parse(text).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 3, 3, 4, 5]);
        assert!(errors[3].reason.contains("yesterday"));
    }

    #[test]
    fn dates_count_days_since_the_epoch() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        assert_eq!(parse_date("01.03.2000"), Some(11_017));
        assert_eq!(parse_date("2024-13-01"), None);
        assert_eq!(parse_date("31.04.2020"), None);
    }

    #[test]
    fn age_is_measured_from_the_file_or_the_newest_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.csv");
        std::fs::write(&path, "A;1;a.no;2026-01-01;Ja\nB;2;b.no;2026-03-01;Nei\n").unwrap();
        let handle = DomainListHandle::load(Some(&path)).unwrap();
        let now = SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(parse_date("2026-06-01").unwrap() as u64 * 86_400);
        // Newest "Dato innmeldt" 2026-03-01 → 92 days before 2026-06-01.
        assert_eq!(handle.age_days(AgeFrom::NewestEntry, now), Some(92));
        // In seconds (the metric's unit), 12 hours later: 92.5 days.
        let later = now + std::time::Duration::from_secs(12 * 3600);
        assert_eq!(
            handle.age_seconds(AgeFrom::NewestEntry, later),
            Some(92 * 86_400 + 12 * 3600)
        );
        // The file was just written: age 0 days from now.
        assert_eq!(handle.age_days(AgeFrom::File, SystemTime::now()), Some(0));
    }

    #[test]
    fn a_refused_file_is_refused_once_until_it_changes() {
        // Review finding: a broken file was re-read, logged and audited every check_interval.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.csv");
        let write = |text: &str, secs: u64| {
            std::fs::write(&path, text).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        };
        write("bits.no\n", 1_000);
        let handle = DomainListHandle::load(Some(&path)).unwrap();
        write("bits.no\nbroken domain\n", 2_000);
        assert!(handle.reload_if_changed().is_err());
        assert!(matches!(
            handle.reload_if_changed(),
            Ok(Reloaded::Unchanged { domains: 1, .. })
        ));
        write("bits.no\nfno.no\n", 3_000);
        assert!(matches!(
            handle.reload_if_changed(),
            Ok(Reloaded::Replaced { new: 2, .. })
        ));
    }

    #[test]
    fn a_failed_reload_keeps_the_old_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.csv");
        std::fs::write(&path, "bits.no\n").unwrap();
        let handle = DomainListHandle::load(Some(&path)).unwrap();
        assert_eq!(handle.current().len(), 1);

        std::fs::write(&path, "bits.no\nbroken domain\n").unwrap();
        let err = handle.reload().unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(handle.current().is_listed(&d("bits.no")));

        std::fs::write(&path, "").unwrap();
        assert!(matches!(handle.reload(), Err(ListError::Empty { .. })));
        assert_eq!(handle.current().len(), 1);

        std::fs::write(&path, "bits.no\nfno.no\n").unwrap();
        match handle.reload().unwrap() {
            Reloaded::Replaced {
                old,
                new,
                sha256,
                added,
                removed,
            } => {
                assert_eq!((old, new), (1, 2));
                assert_eq!(added, vec![d("fno.no")]);
                assert!(removed.is_empty());
                // SHA-256 of the file's bytes "bits.no\nfno.no\n".
                assert_eq!(sha256, sha256_hex(b"bits.no\nfno.no\n"));
                assert_eq!(handle.sha256(), Some(sha256));
            }
            other => panic!("expected a replaced list, got {other:?}"),
        }
        assert!(handle.current().is_listed(&d("fno.no")));
    }

    /// `tlsgate domains reload` prints these (the admin API's `result`).
    #[test]
    fn reload_results_read_as_the_admin_api_reports_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.txt");
        std::fs::write(&path, "bits.no\n").unwrap();
        let handle = DomainListHandle::load(Some(&path)).unwrap();
        let unchanged = handle.reload().unwrap();
        assert_eq!(
            unchanged,
            Reloaded::Unchanged {
                domains: 1,
                sha256: Some(sha256_hex(b"bits.no\n"))
            }
        );
        assert_eq!(unchanged.to_string(), "unchanged: 1 domains");
        std::fs::write(&path, "fno.no\nbank.no\n").unwrap();
        assert_eq!(
            handle.reload().unwrap().to_string(),
            "reloaded: 1 → 2 domains (2 added, 1 removed)"
        );
    }
}
