//! The domain list as administrators have it (T10; issue 15 item 4): the same published table
//! saved as UTF-8, UTF-8 with a byte order mark, Windows-1252 (Excel's "CSV"), UTF-16 text,
//! `;`-, `,`- and tab-separated with quoted cells holding separators and line breaks, and
//! `.xlsx`, gives the same list; the refusal rules stay; a reload is audited with the file's
//! SHA-256 and the domains added and removed (S1).

mod common;

use common::relay::wait_until;
use sha2::{Digest, Sha256};
use std::path::Path;
use tlsgate::domain::Domain;
use tlsgate::policy::domain_list::{DomainList, ListError, ListFile, MAX_LIST_BYTES};

/// The published columns (design.md "Domain list format"), in their order.
const HEADER: [&str; 5] = [
    "Selskapsnavn",
    "Organisasjonsnummer",
    "Domene med tvungen TLS",
    "Dato innmeldt",
    "Støtte for krav 5.2.4",
];

/// Rows as the published table has them, chosen to need every feature of the import: `ø`/`å`
/// (Windows-1252 bytes 0xF8/0xE5), a `;` and a `,` inside cells, a quote, a line break inside a
/// cell, several domains in one cell, and an IDN.
const ROWS: [[&str; 5]; 4] = [
    ["Bits AS", "916960190", "bits.no", "2017-02-01", "Nei"],
    [
        "Blåbær Sparebank; avd. Øst",
        "123456789",
        "blåbær.no, sparebank.example",
        "2024-05-06",
        "Ja",
    ],
    [
        "Finans Norge, \"FNO\"",
        "987654321",
        "fno.no finansnorge.no",
        "2018-03-01",
        "Ja",
    ],
    [
        "Ås kommune\nPostmottak",
        "944382038",
        "as-kommune.no",
        "2020-01-15",
        "Nei",
    ],
];

fn d(name: &str) -> Domain {
    Domain::parse(name).unwrap()
}

/// A CSV cell, quoted as Excel and LibreOffice quote (RFC 4180 2: separators, quotes and line
/// breaks inside need quotes; a quote is doubled).
fn cell(text: &str, sep: char) -> String {
    if text.contains([sep, '"', '\n', ',', ';']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The table as CSV with `sep`, CRLF line ends (what Windows tools write).
fn csv(header: &[&str], rows: &[Vec<&str>], sep: char) -> String {
    let line = |cells: &[&str]| {
        cells
            .iter()
            .map(|c| cell(c, sep))
            .collect::<Vec<_>>()
            .join(&sep.to_string())
    };
    let mut out = line(header) + "\r\n";
    for row in rows {
        out += &(line(row) + "\r\n");
    }
    out
}

fn published_rows() -> Vec<Vec<&'static str>> {
    ROWS.iter().map(|r| r.to_vec()).collect()
}

/// The same table with its header in capitals and without accents, columns in another order
/// and an extra column (header names are matched case- and accent-insensitively; other columns
/// are ignored).
fn shuffled() -> (Vec<&'static str>, Vec<Vec<&'static str>>) {
    let header = vec![
        "DOMENE",
        "Merknad, intern",
        "SELSKAPSNAVN",
        "dato Innmeldt",
        "ORGANISASJONSNUMMER",
        "Stotte for krav 5.2.4",
    ];
    let rows = ROWS
        .iter()
        .map(|r| vec![r[2], "kontakt; se avtale", r[0], r[3], r[1], r[4]])
        .collect();
    (header, rows)
}

fn windows_1252(text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(text);
    assert!(!unmappable, "the fixture is Windows-1252 text");
    bytes.into_owned()
}

/// The table as an `.xlsx` workbook written as Excel writes it: organisation numbers as
/// numbers, "Dato innmeldt" as date cells, a line break inside a cell.
fn xlsx() -> Vec<u8> {
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    let date = rust_xlsxwriter::Format::new().set_num_format("dd.mm.yyyy");
    for (col, name) in HEADER.iter().enumerate() {
        sheet.write_string(0, col as u16, *name).unwrap();
    }
    for (i, row) in ROWS.iter().enumerate() {
        let r = i as u32 + 1;
        sheet.write_string(r, 0, row[0]).unwrap();
        sheet
            .write_number(r, 1, row[1].parse::<f64>().unwrap())
            .unwrap();
        sheet.write_string(r, 2, row[2]).unwrap();
        let ymd: Vec<u16> = row[3].split('-').map(|p| p.parse().unwrap()).collect();
        let when =
            rust_xlsxwriter::ExcelDateTime::from_ymd(ymd[0], ymd[1] as u8, ymd[2] as u8).unwrap();
        sheet
            .write_datetime_with_format(r, 3, &when, &date)
            .unwrap();
        sheet.write_string(r, 4, row[4]).unwrap();
    }
    book.save_to_buffer().unwrap()
}

fn load(dir: &Path, name: &str, bytes: &[u8]) -> Result<DomainList, ListError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    DomainList::load(&path)
}

/// Issue 15 items 4 and 6: every format and encoding an administrator may save the published
/// table in gives the same list, with the same organisation facts (T10).
#[test]
fn every_format_and_encoding_gives_the_same_list() {
    let dir = tempfile::tempdir().unwrap();
    let rows = published_rows();
    let semicolon = csv(&HEADER, &rows, ';');
    let comma = csv(&HEADER, &rows, ',');
    let (shuffled_header, shuffled_rows) = shuffled();
    let shuffled_comma = csv(&shuffled_header, &shuffled_rows, ',');
    let tab = csv(&HEADER, &rows, '\t');
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(tab.encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let workbook = xlsx();

    let reference = load(dir.path(), "utf8.csv", semicolon.as_bytes()).unwrap();
    // What the rows say, read back (so "the same list" is the right list, not the same mistake).
    assert_eq!(reference.len(), 6);
    let blabaer = reference.get(&d("blåbær.no")).unwrap();
    assert_eq!(blabaer.company, "Blåbær Sparebank; avd. Øst");
    assert_eq!(blabaer.org_number, "123456789");
    assert_eq!(blabaer.supports_5_2_4, Some(true));
    assert_eq!(
        blabaer.joined,
        tlsgate::policy::domain_list::parse_date("2024-05-06")
    );
    assert!(reference.is_listed(&d("sparebank.example")));
    assert_eq!(
        reference.get(&d("fno.no")).unwrap().company,
        "Finans Norge, \"FNO\""
    );
    assert!(reference.is_listed(&d("finansnorge.no")));
    assert_eq!(
        reference.get(&d("as-kommune.no")).unwrap().company,
        "Ås kommune\nPostmottak"
    );
    assert_eq!(
        reference.get(&d("bits.no")).unwrap().supports_5_2_4,
        Some(false)
    );

    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(semicolon.as_bytes());
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("utf8-bom.csv", bom),
        ("cp1252-semicolon.csv", windows_1252(&semicolon)),
        ("utf8-comma.csv", comma.clone().into_bytes()),
        ("cp1252-comma.csv", windows_1252(&comma)),
        ("shuffled-comma.csv", shuffled_comma.clone().into_bytes()),
        ("cp1252-shuffled.csv", windows_1252(&shuffled_comma)),
        (
            "unix-lines.csv",
            semicolon.replace("\r\n", "\n").into_bytes(),
        ),
        ("excel-unicode-text.txt", utf16),
        ("tab.txt", tab.into_bytes()),
        ("published.xlsx", workbook.clone()),
        // Detected by its content (the ZIP signature), not by the name: a fetched or renamed
        // workbook is still read as one.
        ("saved-as.csv", workbook),
    ];
    for (name, bytes) in variants {
        let list = load(dir.path(), name, &bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(list, reference, "{name} gives the same list");
    }
    // The Windows-1252 fixture really is not UTF-8 (ø/å as single bytes), so that path is the
    // one tested.
    assert!(std::str::from_utf8(&windows_1252(&semicolon)).is_err());
}

/// A plain one-domain-per-line list keeps working, in any encoding (T10, design.md).
#[test]
fn plain_lists_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let text = "# tvungen TLS\r\nbits.no\r\n\r\nFNO.NO.\r\nblåbær.no\r\n";
    for (name, bytes) in [
        ("plain.txt", text.as_bytes().to_vec()),
        ("plain-1252.txt", windows_1252(text)),
    ] {
        let list = load(dir.path(), name, &bytes).unwrap();
        assert_eq!(list.len(), 3, "{name}");
        assert!(list.is_listed(&d("fno.no")));
        assert!(list.is_listed(&d("blåbær.no")));
    }
}

/// The refusal rules hold for every format: a bad row refuses the whole file with its line
/// (row) number — counted in file lines, so a line break inside a quoted cell does not shift
/// it — an empty list is refused, and so is a file over the size cap (T10: a damaged file
/// never shortens the list in force).
#[test]
fn bad_files_are_refused_with_the_place_of_the_fault() {
    let dir = tempfile::tempdir().unwrap();
    // Line 2 holds a cell over two lines; the bad row starts on line 4.
    let text = "Selskapsnavn;Organisasjonsnummer;Domene med tvungen TLS;Dato innmeldt\r\n\
                \"Blåbær\r\nSparebank\";1;blåbær.no;2020-01-01\r\n\
                Feil AS;2;ikke et domene!;2020-01-01\r\n";
    let err = load(dir.path(), "bad.csv", &windows_1252(text))
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 4"), "{err}");
    assert!(!err.contains("line 2"), "{err}");

    // In a workbook, the row number as Excel shows it.
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    for (col, name) in HEADER.iter().enumerate() {
        sheet.write_string(0, col as u16, *name).unwrap();
    }
    sheet.write_string(1, 2, "bits.no").unwrap();
    sheet.write_string(2, 2, "not a domain!").unwrap();
    let err = load(dir.path(), "bad.xlsx", &book.save_to_buffer().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3"), "{err}");

    let err = load(dir.path(), "header-only.csv", HEADER.join(";").as_bytes()).unwrap_err();
    assert!(matches!(err, ListError::Empty { .. }), "{err}");

    let big = vec![b'#'; MAX_LIST_BYTES as usize + 1];
    let err = load(dir.path(), "big.csv", &big).unwrap_err().to_string();
    assert!(err.contains("larger than"), "{err}");

    let err = load(dir.path(), "broken.xlsx", b"PK\x03\x04not really a zip")
        .unwrap_err()
        .to_string();
    assert!(err.contains(".xlsx"), "{err}");
}

/// The SHA-256 reported for a list is that of the file's bytes (S1: which file was in force).
#[test]
fn the_list_file_digest_is_that_of_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("list.txt");
    std::fs::write(&path, "bits.no\n").unwrap();
    let file = ListFile::load(&path).unwrap();
    assert_eq!(file.sha256, hex(&Sha256::digest(b"bits.no\n")));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The log line names at most 20 domains, then counts the rest.
#[test]
fn logged_names_are_capped() {
    let names: Vec<Domain> = (0..25).map(|i| d(&format!("d{i:02}.no"))).collect();
    let shown = tlsgate::ops::domain_list::capped_names(&names);
    assert!(shown.starts_with("d00.no, d01.no"), "{shown}");
    assert!(shown.contains("d19.no"), "{shown}");
    assert!(!shown.contains("d20.no"), "{shown}");
    assert!(shown.ends_with(" and 5 more"), "{shown}");
    assert_eq!(tlsgate::ops::domain_list::capped_names(&[]), "-");
}

/// Issue 15 item 4, S1: a reload in a running relay is audited with the SHA-256 of the new
/// file and every domain added and removed.
#[tokio::test]
async fn a_reload_is_audited_with_the_digest_and_the_changes() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(&list, "bits.no\nfno.no\n").unwrap();
    let ca = common::TestCa::new();
    let (cert, key) = ca.write_server_files(dir.path(), &[common::HOSTNAME]);
    let text = common::base_config(
        dir.path(),
        &cert,
        &key,
        &format!("[domain_list]\npath = \"{}\"\n", list.display()),
    );
    let audit_dir = dir.path().join("data").join("audit");
    let server = common::TestServer::start_with_config(dir, ca, &text).await;

    let new_list = "fno.no\r\nnew2.no\r\nnew1.no\r\n";
    std::fs::write(&list, new_list).unwrap();
    server.running().reload_domain_list();
    let handle = server.running().domain_list().clone();
    assert!(handle.current().is_listed(&d("new1.no")));
    let sha = hex(&Sha256::digest(new_list.as_bytes()));
    assert_eq!(handle.sha256().as_deref(), Some(sha.as_str()));

    let mut entry = None;
    wait_until(
        || {
            entry = reload_entries(&audit_dir).into_iter().last();
            entry.is_some()
        },
        "the reload is in the audit log",
    )
    .await;
    let entry = entry.unwrap();
    assert_eq!(entry["ok"], true);
    assert_eq!(
        (entry["old"].as_u64(), entry["new"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(entry["sha256"], sha.as_str());
    assert_eq!(entry["added"], serde_json::json!(["new1.no", "new2.no"]));
    assert_eq!(entry["removed"], serde_json::json!(["bits.no"]));
}

/// The `domain_list_reload` events of the audit log under `dir`.
fn reload_entries(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(files) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = files.flatten().map(|f| f.path()).collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .map(|entry| entry["event"].clone())
        .filter(|event| event["event"] == "domain_list_reload")
        .collect()
}
