//! The *Domeneliste for Tvungen TLS* (T10): the published list of domains that mail must only
//! reach over validated TLS.
//!
//! Accepted formats (design.md, "Domain list format"):
//! * the Bits list as CSV, `;` or `,` separated, with or without its header row
//!   `Selskapsnavn; Organisasjonsnummer; Domene med tvungen TLS; Dato innmeldt; Støtte for krav
//!   5.2.4`; a domain cell may name several domains (separated by spaces, `,` or `;` inside
//!   quotes);
//! * one domain per line.
//!
//! Lines starting with `#` and empty lines are ignored. Names are normalised (case, trailing
//! dot, IDNA → A-label). A file with any bad row is refused whole, with every bad line listed,
//! so a damaged file can never silently shorten the list; the caller keeps the old list.

use crate::domain::Domain;
use std::collections::BTreeMap;
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

    /// Parses list text; `Err` lists every bad line.
    pub fn parse(text: &str) -> Result<DomainList, Vec<LineError>> {
        let mut list = DomainList::default();
        let mut errors = Vec::new();
        let mut columns: Option<Columns> = None;
        let mut header_seen = false;
        for (index, raw_line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw_line.trim_start_matches('\u{feff}').trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let separator = separator_of(line);
            let cells = match separator {
                Some(sep) => split_csv(line, sep),
                None => vec![line.to_string()],
            };
            if !header_seen && is_header(&cells) {
                header_seen = true;
                columns = Some(Columns::from_header(&cells));
                continue;
            }
            header_seen = true;
            let cols = columns.unwrap_or(if cells.len() == 1 {
                Columns::single()
            } else {
                Columns::bits_order()
            });
            let cell = |i: Option<usize>| {
                i.and_then(|i| cells.get(i))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            };
            let domain_cell = cell(Some(cols.domain));
            if domain_cell.is_empty() {
                errors.push(LineError {
                    line: line_no,
                    reason: "no domain in the \"Domene med tvungen TLS\" column".into(),
                });
                continue;
            }
            let joined_text = cell(cols.joined);
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
            let supports = match cell(cols.supports).to_ascii_lowercase().as_str() {
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
                                company: cell(cols.company),
                                org_number: cell(cols.org_number),
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

    /// Reads and parses a list file.
    pub fn load(path: &Path) -> Result<DomainList, ListError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ListError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let text = String::from_utf8(bytes).map_err(|_| ListError::Read {
            path: shown.clone(),
            reason: "not UTF-8 text".into(),
        })?;
        let list = DomainList::parse(&text).map_err(|errors| ListError::Parse {
            path: shown.clone(),
            errors,
        })?;
        if list.is_empty() {
            return Err(ListError::Empty { path: shown });
        }
        Ok(list)
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

    fn single() -> Columns {
        Columns {
            company: None,
            org_number: None,
            domain: 0,
            joined: None,
            supports: None,
        }
    }

    fn from_header(cells: &[String]) -> Columns {
        let find = |words: &[&str]| {
            cells.iter().position(|c| {
                let c = c.to_lowercase();
                words.iter().any(|w| c.contains(w))
            })
        };
        Columns {
            company: find(&["selskap", "company", "navn"]),
            org_number: find(&["organisasjonsnummer", "org"]),
            domain: find(&["domene", "domain"]).unwrap_or(0),
            joined: find(&["dato", "date", "innmeldt"]),
            supports: find(&["5.2.4", "støtte", "support"]),
        }
    }
}

fn is_header(cells: &[String]) -> bool {
    cells.iter().any(|c| {
        let c = c.to_lowercase();
        c.contains("domene") || c.contains("selskapsnavn") || c == "domain"
    })
}

/// `;` wins over `,` (the Bits list uses `;`; a `,` may then separate domains in a cell).
fn separator_of(line: &str) -> Option<char> {
    if line.contains(';') {
        Some(';')
    } else if line.contains(',') {
        Some(',')
    } else {
        None
    }
}

/// Splits one CSV line; double quotes protect separators, `""` is a quote.
fn split_csv(line: &str, sep: char) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            c if c == sep && !quoted => cells.push(std::mem::take(&mut cell)),
            c => cell.push(c),
        }
    }
    cells.push(cell);
    cells
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
}

#[derive(Clone)]
struct Loaded {
    list: Arc<DomainList>,
    modified: Option<SystemTime>,
}

/// What a successful reload did; its `Display` is the admin API's `result` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The list in force stays (the file holds the same list, or did not change).
    Unchanged { domains: usize },
    /// A different list is in force now.
    Replaced { old: usize, new: usize },
}

impl fmt::Display for Reloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reloaded::Unchanged { domains } => write!(f, "unchanged: {domains} domains"),
            Reloaded::Replaced { old, new } => write!(f, "reloaded: {old} → {new} domains"),
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
            Some(p) => Loaded {
                list: Arc::new(DomainList::load(p)?),
                modified: modified(p),
            },
            None => Loaded {
                list: Arc::new(DomainList::default()),
                modified: None,
            },
        };
        Ok(DomainListHandle {
            path: path.map(Path::to_path_buf),
            current: RwLock::new(loaded),
        })
    }

    /// A handle holding a given list (tests, `probe`).
    pub fn fixed(list: DomainList) -> DomainListHandle {
        DomainListHandle {
            path: None,
            current: RwLock::new(Loaded {
                list: Arc::new(list),
                modified: None,
            }),
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

    /// The list file; `None` when no list is configured (or for [`DomainListHandle::fixed`]).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reloads the file. On error the old list stays in force.
    pub fn reload(&self) -> Result<Reloaded, ListError> {
        let Some(path) = &self.path else {
            return Ok(self.unchanged());
        };
        let list = DomainList::load(path)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        current.modified = modified(path);
        if *current.list == list {
            return Ok(Reloaded::Unchanged {
                domains: list.len(),
            });
        }
        let old = current.list.len();
        let new = list.len();
        current.list = Arc::new(list);
        Ok(Reloaded::Replaced { old, new })
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
        if modified(path) == seen {
            return Ok(self.unchanged());
        }
        self.reload()
    }

    fn unchanged(&self) -> Reloaded {
        Reloaded::Unchanged {
            domains: self.current().len(),
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
        assert_eq!(
            handle.reload().unwrap(),
            Reloaded::Replaced { old: 1, new: 2 }
        );
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
        assert_eq!(unchanged, Reloaded::Unchanged { domains: 1 });
        assert_eq!(unchanged.to_string(), "unchanged: 1 domains");
        std::fs::write(&path, "bits.no\nfno.no\n").unwrap();
        assert_eq!(
            handle.reload().unwrap().to_string(),
            "reloaded: 1 → 2 domains"
        );
    }
}
