//! Property tests of the parsers and of DSN building (issue 16 item 6; non-negotiable 4: bad
//! input gets a clear error, never a crash or a hang). Each property runs 256 cases by default;
//! `PROPTEST_CASES` overrides it (proptest reads it into `ProptestConfig::default()`).
//!
//! * SMTP command parser (RFC 5321 4.1): any bytes → no panic; generated valid commands parse
//!   to what was generated.
//! * Addresses and ESMTP parameters: any text → no panic; a generated mailbox parses to the
//!   same local part and domain; a path over 256 octets (RFC 5321 4.5.3.1.3) is refused.
//! * DATA decoder (RFC 5321 4.1.1.4, 4.5.2): any split of a stream gives the same message; a
//!   bare CR or LF anywhere is always refused (SMTP smuggling; tests/smuggling.rs).
//! * Domain list (T10): any bytes → no panic; a generated list written as CSV (UTF-8 or
//!   Windows-1252) reads back as the same domains.
//! * DSN (RFC 3464, RFC 5322 2.1.1, 2.3): any recipient and diagnostic text → a well-formed
//!   message: CRLF line ends only, lines of at most 998 octets, a multipart/report with a
//!   message/delivery-status part whose fields are intact.

use proptest::prelude::*;
use tlsgate::domain::Domain;
use tlsgate::policy::domain_list::DomainList;
use tlsgate::smtp::address::{Address, ForwardPath, ReversePath};
use tlsgate::smtp::command::{parse_command, BodyType, Command};
use tlsgate::smtp::data::{DataDecoder, DataOutcome, Feed};

/// 256 cases unless `PROPTEST_CASES` says otherwise: the whole file stays well under a minute
/// in a debug build.
fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        default.cases
    } else {
        256
    };
    ProptestConfig {
        cases,
        // Failure persistence files would land in the source tree; the seed is printed anyway.
        failure_persistence: None,
        ..default
    }
}

/// A DNS label (RFC 1035 2.3.1 preferred syntax), lowercase so that it is its own normal form;
/// at most one hyphen, never in the third and fourth place (IDNA reserves `??--`).
fn label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,10}(-[a-z0-9]{1,5})?"
}

/// A domain of two to four labels.
fn domain() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 2..5).prop_map(|labels| labels.join("."))
}

/// A dot-string local part (RFC 5321 4.1.2: atoms of atext separated by single dots).
fn local_part() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,12}", 1..4)
        .prop_map(|atoms| atoms.join("."))
}

/// An SMTP verb in any case (RFC 5321 2.4: verbs are case-insensitive).
fn any_case(verb: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<bool>(), verb.len()).prop_map(move |upper| {
        verb.chars()
            .zip(upper)
            .map(|(c, u)| {
                if u {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    })
}

/// A valid command line and the command it must parse to.
fn valid_command() -> impl Strategy<Value = (String, Command)> {
    prop_oneof![
        (any_case("EHLO"), domain()).prop_map(|(v, d)| (format!("{v} {d}"), Command::Ehlo(d))),
        (any_case("HELO"), domain()).prop_map(|(v, d)| (format!("{v} {d}"), Command::Helo(d))),
        (
            any_case("MAIL FROM:"),
            (local_part(), domain()),
            proptest::option::of(0u64..100_000_000),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(v, (l, d), size, eight_bit, requiretls)| {
                let mut line = format!("{v}<{l}@{d}>");
                if let Some(size) = size {
                    line += &format!(" SIZE={size}");
                }
                if eight_bit {
                    line += " BODY=8BITMIME";
                }
                if requiretls {
                    line += " REQUIRETLS";
                }
                let address = Address::new(&l, Domain::parse(&d).unwrap()).unwrap();
                let cmd = Command::Mail(tlsgate::smtp::command::MailFrom {
                    sender: ReversePath::Address(address),
                    size,
                    body: eight_bit.then_some(BodyType::EightBitMime),
                    smtputf8: false,
                    ret: None,
                    envid: None,
                    requiretls,
                });
                (line, cmd)
            }),
        any_case("MAIL FROM:").prop_map(|v| (
            format!("{v}<>"),
            Command::Mail(tlsgate::smtp::command::MailFrom {
                sender: ReversePath::Null,
                size: None,
                body: None,
                smtputf8: false,
                ret: None,
                envid: None,
                requiretls: false,
            })
        )),
        (any_case("RCPT TO:"), (local_part(), domain())).prop_map(|(v, (l, d))| {
            let address = Address::new(&l, Domain::parse(&d).unwrap()).unwrap();
            (
                format!("{v}<{l}@{d}>"),
                Command::Rcpt(tlsgate::smtp::command::RcptTo {
                    recipient: ForwardPath::Address(address),
                    notify: Default::default(),
                    orcpt: None,
                }),
            )
        }),
        any_case("DATA").prop_map(|v| (v, Command::Data)),
        any_case("RSET").prop_map(|v| (v, Command::Rset)),
        any_case("NOOP").prop_map(|v| (v, Command::Noop)),
        any_case("QUIT").prop_map(|v| (v, Command::Quit)),
        any_case("STARTTLS").prop_map(|v| (v, Command::StartTls)),
        (any_case("BDAT"), 0u64..10_000_000, any::<bool>()).prop_map(|(v, size, last)| {
            let line = if last {
                format!("{v} {size} LAST")
            } else {
                format!("{v} {size}")
            };
            (line, Command::Bdat { size, last })
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes as a command line: an answer, never a panic (non-negotiable 4).
    #[test]
    fn command_parser_takes_any_bytes(line in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_command(&line);
    }

    /// Known verbs with arbitrary arguments reach the argument parsers: no panic, and a refusal
    /// is a 5xx reply (RFC 5321 4.2.4: syntax errors are 500/501/553/555).
    #[test]
    fn command_arguments_take_any_text(
        verb in prop::sample::select(vec![
            "MAIL FROM:", "RCPT TO:", "EHLO ", "HELO ", "BDAT ", "VRFY ", "MAIL FROM:<a@b.no> ",
            "RCPT TO:<a@b.no> ", "MAIL FROM:<", "RCPT TO:<\"",
        ]),
        rest in "\\PC{0,300}",
    ) {
        if let Err(e) = parse_command(format!("{verb}{rest}").as_bytes()) {
            let code = e.reply().code;
            prop_assert!((500..600).contains(&code), "{code}");
        }
    }

    /// A generated valid command parses to exactly what was generated.
    #[test]
    fn valid_commands_parse_to_what_was_generated((line, expected) in valid_command()) {
        prop_assert_eq!(parse_command(line.as_bytes()), Ok(expected), "{}", line);
    }

    /// Any text as a mailbox: an answer, never a panic.
    #[test]
    fn address_parser_takes_any_text(mailbox in "\\PC{0,300}") {
        let _ = Address::parse(&mailbox);
    }

    /// A generated mailbox parses to the same local part and (normalised) domain.
    #[test]
    fn generated_mailboxes_parse_back(local in local_part(), domain in domain()) {
        let address = Address::parse(&format!("{local}@{domain}")).unwrap();
        prop_assert_eq!(address.local_part(), local.as_str());
        prop_assert_eq!(address.domain().as_str(), domain.as_str());
    }

    /// RFC 5321 4.5.3.1.3: a path over 256 octets is refused with a 5xx reply, not accepted
    /// and not a panic; 4.5.3.1.1 makes 64 octets a floor for local parts, not a ceiling, so
    /// tlsgate accepts longer ones inside the path limit (tests/address_length.rs).
    #[test]
    fn over_long_paths_are_refused(local_len in 1usize..400, domain in domain()) {
        let local = "a".repeat(local_len);
        let path = format!("{local}@{domain}");
        let result = parse_command(format!("MAIL FROM:<{path}>").as_bytes());
        if path.len() > 256 {
            let code = result.unwrap_err().reply().code;
            prop_assert!((500..600).contains(&code), "{code}");
        } else {
            prop_assert!(result.is_ok(), "{} octets", path.len());
        }
    }

    /// An over-long domain or label (RFC 1035 2.3.4: 63 octets a label, 255 a name) is
    /// refused.
    #[test]
    fn over_long_labels_are_refused(len in 64usize..200) {
        let domain = format!("{}.no", "a".repeat(len));
        prop_assert!(Domain::parse(&domain).is_err());
        let mailbox = format!("x@{domain}");
        prop_assert!(Address::parse(&mailbox).is_err());
    }
}

/// One message: lines without CR or LF, some starting with `.` (to be dot-stuffed).
fn message_lines() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let line = prop_oneof![
        prop::collection::vec(
            any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
            0..80
        ),
        "\\.{1,3}[a-z ]{0,10}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(line, 0..20)
}

/// The stream a client sends after `354`: dot-stuffed lines (RFC 5321 4.5.2), CRLF ends, the
/// `.<CRLF>` end; and the message the decoder must give back.
fn encode(lines: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
    let mut stream = Vec::new();
    let mut message = Vec::new();
    for line in lines {
        if line.first() == Some(&b'.') {
            stream.push(b'.');
        }
        stream.extend_from_slice(line);
        stream.extend_from_slice(b"\r\n");
        message.extend_from_slice(line);
        message.extend_from_slice(b"\r\n");
    }
    stream.extend_from_slice(b".\r\n");
    (stream, message)
}

/// Feeds `stream` cut at `cuts` (positions, any order); returns the message, the outcome and
/// how many octets ended the data (`None`: no end found).
fn decode(stream: &[u8], cuts: &[usize]) -> (Vec<u8>, DataOutcome, Option<usize>) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(0);
    points.push(stream.len());
    points.sort_unstable();
    points.dedup();
    let mut decoder = DataDecoder::new(1 << 20);
    let mut out = Vec::new();
    for pair in points.windows(2) {
        let chunk = &stream[pair[0]..pair[1]];
        if let Feed::Done { consumed } = decoder.feed(chunk, &mut out) {
            assert!(consumed <= chunk.len());
            return (out, decoder.outcome(), Some(pair[0] + consumed));
        }
    }
    (out, decoder.outcome(), None)
}

proptest! {
    #![proptest_config(config())]

    /// However the stream is split into reads, the decoder gives the same message, ends at
    /// the same octet, and leaves pipelined commands after it alone (RFC 5321 4.1.1.4).
    #[test]
    fn any_split_gives_the_same_message(
        lines in message_lines(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let (mut stream, message) = encode(&lines);
        let end = stream.len();
        stream.extend_from_slice(b"QUIT\r\n");
        let (out, outcome, consumed) = decode(&stream, &cuts);
        prop_assert_eq!(outcome, DataOutcome::Ok);
        prop_assert_eq!(consumed, Some(end));
        prop_assert_eq!(out, message);
    }

    /// A bare LF or bare CR anywhere in the message marks it refused, whatever the split, and
    /// the data still ends only at the real `<CRLF>.<CRLF>` (SMTP smuggling, SEC Consult
    /// 2023; tests/smuggling.rs).
    #[test]
    fn a_bare_cr_or_lf_is_always_refused(
        lines in message_lines().prop_filter("a line to put it in", |l| !l.is_empty()),
        at in any::<usize>(),
        bare in prop::sample::select(vec![b'\r', b'\n']),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let (stream, _) = encode(&lines);
        // Anywhere before the final CRLF of the last line, so the real end stays intact.
        let content = stream.len() - 3 - 2;
        let mut bad = stream.clone();
        bad.insert(at % (content + 1), bare);
        let (_, outcome, consumed) = decode(&bad, &cuts);
        prop_assert_eq!(outcome, DataOutcome::BareLineEnding);
        prop_assert_eq!(consumed, Some(bad.len()));
    }

    /// Any bytes in any split: no panic, and an end, when found, lies inside the input.
    #[test]
    fn the_decoder_takes_any_bytes(
        stream in prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..400),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let (_, _, consumed) = decode(&stream, &cuts);
        if let Some(consumed) = consumed {
            prop_assert!(consumed <= stream.len());
        }
    }
}

/// Company names with what makes CSV hard: separators, quotes, line breaks, `æøå` (all in
/// Windows-1252). A name starts with a letter (a row whose first cell starts with `#` is a
/// comment).
fn company() -> impl Strategy<Value = String> {
    "[A-Za-zÆØÅæøå][A-Za-z0-9ÆØÅæøåé ;,\"\n.-]{0,30}".prop_map(|s| s.trim().to_string())
}

/// A list as rows: company, organisation number, one to three domains, join date (days),
/// support for 5.2.4.
fn list_rows() -> impl Strategy<Value = Vec<(String, String, Vec<String>, i64, bool)>> {
    prop::collection::vec(
        (
            company(),
            "[0-9]{9}",
            prop::collection::vec(domain(), 1..4),
            0i64..20_000,
            any::<bool>(),
        ),
        1..15,
    )
}

fn csv_cell(text: &str, sep: char) -> String {
    if text.contains([sep, '"', '\n', '\r', ';', ',']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn date(days: i64) -> String {
    let d = time::Date::from_julian_day(2_440_588 + days as i32).unwrap();
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes as a list file: a list or an error, never a panic (T10).
    #[test]
    fn list_parser_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = DomainList::parse_bytes(&bytes);
    }

    /// Any text, with the characters CSV cares about, as a list: no panic.
    #[test]
    fn list_parser_takes_any_text(text in "[a-zA-Z0-9.;,\"\t\r\n# æøå-]{0,600}") {
        let _ = DomainList::parse(&text);
        let _ = DomainList::parse_bytes(text.as_bytes());
    }

    /// A generated list written as CSV, with `;` or `,`, CRLF or LF, UTF-8 or Windows-1252,
    /// reads back as the same domains with the same organisation facts.
    #[test]
    fn a_written_list_reads_back(
        rows in list_rows(),
        sep in prop::sample::select(vec![';', ',', '\t']),
        crlf in any::<bool>(),
        cp1252 in any::<bool>(),
    ) {
        let end = if crlf { "\r\n" } else { "\n" };
        let mut text = ["Selskapsnavn", "Organisasjonsnummer", "Domene med tvungen TLS",
            "Dato innmeldt", "Støtte for krav 5.2.4"].join(&sep.to_string()) + end;
        let mut expected = std::collections::BTreeMap::new();
        for (company, org, domains, joined, supports) in &rows {
            let cells = [
                csv_cell(company, sep),
                org.clone(),
                csv_cell(&domains.join(", "), sep),
                date(*joined),
                if *supports { "Ja".into() } else { "Nei".into() },
            ];
            text += &(cells.join(&sep.to_string()) + end);
            for d in domains {
                // A later row naming the same domain wins, as in the parser.
                expected.insert(d.clone(), (company.clone(), org.clone(), *joined, *supports));
            }
        }
        let bytes = if cp1252 {
            encoding_rs::WINDOWS_1252.encode(&text).0.into_owned()
        } else {
            text.into_bytes()
        };
        let list = DomainList::parse_bytes(&bytes).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(list.len(), expected.len());
        for (name, (company, org, joined, supports)) in expected {
            let entry = list.get(&Domain::parse(&name).unwrap());
            prop_assert!(entry.is_some(), "{} missing", name);
            let entry = entry.unwrap();
            // A line break inside a cell may come back as CRLF when the file has CRLF ends;
            // the name is the same either way.
            prop_assert_eq!(entry.company.replace("\r\n", "\n"), company);
            prop_assert_eq!(&entry.org_number, &org);
            prop_assert_eq!(entry.joined, Some(joined));
            prop_assert_eq!(entry.supports_5_2_4, Some(supports));
        }
    }
}

mod dsn {
    use super::*;
    use mail_parser::MimeHeaders;
    use tlsgate::config::Config;
    use tlsgate::dsn::{build, DsnKind, DsnRequest, ReportedRecipient};
    use tlsgate::queue::message::{
        BodyType, DsnNotify, MessageMeta, QueueId, Reception, Recipient,
    };

    const ORIGINAL: &[u8] =
        b"From: Kari <kari@bank.no>\r\nTo: ola@partner.no\r\nSubject: Rapport\r\n\r\nHei\r\n";

    fn config(norwegian: bool) -> Config {
        let language = if norwegian { "no" } else { "en" };
        Config::from_toml(
            &format!(
                r#"
                [server]
                hostname = "mx1.bank.no"
                data_dir = "/tmp/unused"
                admin_contact = "postmaster@bank.no"
                [[listener]]
                bind = "127.0.0.1:0"
                role = "outbound"
                [outbound]
                relay_networks = ["10.0.0.0/8"]
                [delivery]
                dsn_language = "{language}"
                "#
            ),
            "test.toml",
        )
        .unwrap()
    }

    fn meta(recipients: Vec<Recipient>) -> MessageMeta {
        MessageMeta {
            id: QueueId::generate(),
            sender: Some("kari@bank.no".into()),
            recipients,
            ret: None,
            envid: Some("env-1".into()),
            body_type: BodyType::SevenBit,
            smtputf8: false,
            requiretls: false,
            reception: Reception {
                client_ip: "10.1.2.3".parse().unwrap(),
                helo: "exchange.bank.no".into(),
                role: tlsgate::config::Role::Outbound,
                tls: None,
                received_at: 1_700_000_000,
            },
            received_header: "Received: from exchange.bank.no by mx1.bank.no; x\r\n".into(),
            size: ORIGINAL.len() as u64,
        }
    }

    /// Text that may hold anything: non-ASCII, CR, LF, NUL, tabs, very long runs.
    fn nasty() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,200}",
            "[a-zæøå \r\n\t\u{0}\u{85}\u{2028}-]{0,200}",
            "[a-z]{900,1500}",
            "[a-z ]{1000,2500}",
        ]
    }

    /// The names of the fields RFC 3464 2.2 and 2.3 define (those tlsgate writes).
    const FIELDS: &[&str] = &[
        "Reporting-MTA",
        "Original-Envelope-Id",
        "Arrival-Date",
        "Original-Recipient",
        "Final-Recipient",
        "Action",
        "Status",
        "Remote-MTA",
        "Diagnostic-Code",
        "Last-Attempt-Date",
        "Will-Retry-Until",
    ];

    proptest! {
        #![proptest_config(config_cases())]

        /// Any recipient and diagnostic text gives a well-formed report: CRLF line ends only,
        /// no line over 998 octets (RFC 5322 2.1.1, 2.3), a multipart/report that mail-parser
        /// reads with its message/delivery-status part, whose every line is a known field or
        /// a folded continuation (no injected fields, RFC 3464 2.1).
        #[test]
        fn any_text_gives_a_well_formed_report(
            address in nasty(),
            orcpt in proptest::option::of(nasty()),
            diagnostic in nasty(),
            host in proptest::option::of(nasty()),
            kind in prop::sample::select(vec![DsnKind::Failure, DsnKind::Delay, DsnKind::Relayed]),
            norwegian in any::<bool>(),
        ) {
            let config = config(norwegian);
            let recipient = Recipient {
                address,
                notify: DsnNotify::default(),
                orcpt: orcpt.map(|o| ("rfc822".to_string(), o)),
            };
            let meta = meta(vec![recipient.clone()]);
            let request = DsnRequest {
                kind,
                reporting_mta: &config.server.hostname,
                admin_contact: config.server.admin_contact.as_deref(),
                original: &meta,
                original_body: Some(ORIGINAL),
                recipients: vec![ReportedRecipient {
                    recipient,
                    status: "5.1.1".into(),
                    remote_mta: host,
                    diagnostic,
                    last_attempt: 1_700_000_100,
                }],
                delivery: &config.delivery,
                now: 1_700_000_200,
            };
            let message = build(&request).expect("a sender and a recipient: a DSN");
            let body = &message.body;
            for (i, b) in body.iter().enumerate() {
                if *b == b'\r' {
                    prop_assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR at {}", i);
                }
                if *b == b'\n' {
                    prop_assert!(i > 0 && body[i - 1] == b'\r', "bare LF at {}", i);
                }
            }
            for line in body.split(|b| *b == b'\n') {
                prop_assert!(line.len() <= 999, "a line of {} octets", line.len());
            }
            let parsed = mail_parser::MessageParser::default().parse(body.as_slice());
            prop_assert!(parsed.is_some());
            let parsed = parsed.unwrap();
            let root = parsed.content_type().map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")));
            prop_assert_eq!(root.as_deref(), Some("multipart/report"));
            let subparts = parsed.parts[0].sub_parts().map(|s| s.to_vec()).unwrap_or_default();
            prop_assert_eq!(subparts.len(), 3, "human text, delivery-status, original");
            let status = &parsed.parts[subparts[1] as usize];
            let ctype = status.content_type().map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")));
            prop_assert_eq!(ctype.as_deref(), Some("message/delivery-status"));
            let text = String::from_utf8_lossy(status.contents()).to_string();
            let mut recipients = 0;
            for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                if line.starts_with([' ', '\t']) {
                    continue;
                }
                let name = line.split(':').next().unwrap_or_default();
                prop_assert!(FIELDS.contains(&name), "unexpected line {:?}", line);
                if name == "Final-Recipient" {
                    recipients += 1;
                }
            }
            prop_assert_eq!(recipients, 1);
        }
    }

    fn config_cases() -> ProptestConfig {
        super::config()
    }
}
