//! The DNSSEC trust anchor of `dns.dnssec = "validate"` (D5): the root zone's DNSKEY records,
//! read from `dns.trust_anchor` in zone-file form, or the IANA root KSKs built into hickory.
//!
//! The file holds one or more `. IN DNSKEY <flags> 3 <algorithm> <base64>` records (the output
//! of `dig . DNSKEY`, or `unbound-anchor`'s file, works; `;` comments and records split over
//! lines in parentheses too). DS records may stand next to them, as IANA publishes the root
//! anchor (RFC 7958); each must match one of the file's keys (RFC 4034 section 5.1.4), so a
//! key that was mistyped or replaced is refused at start instead of failing every lookup.

use hickory_resolver::proto::dnssec::rdata::DNSKEY;
use hickory_resolver::proto::dnssec::{Algorithm, DigestType, PublicKey, TrustAnchors};
use hickory_resolver::proto::rr::Name;
use std::path::Path;
use std::str::FromStr;

/// Why a trust anchor file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A record that is not a root DNSKEY or DS, or one that does not parse.
    #[error("record {index} ({record:?}): {reason}")]
    Record {
        /// 1-based position of the record in the file.
        index: usize,
        /// The record as read (comments removed, joined onto one line).
        record: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file has no DNSKEY record.
    #[error("no DNSKEY record for the root (\".\") in the file")]
    NoKey,
}

/// The trust anchor: `path`'s root keys, or the IANA root KSKs built in when `path` is `None`.
pub fn load(path: Option<&Path>) -> Result<TrustAnchors, AnchorError> {
    match path {
        None => Ok(TrustAnchors::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| AnchorError::Read {
                path: path.display().to_string(),
                source,
            })?;
            parse(&text)
        }
    }
}

/// Parses the zone-file text of a trust anchor (see the module documentation).
pub fn parse(text: &str) -> Result<TrustAnchors, AnchorError> {
    let mut anchors = TrustAnchors::empty();
    let mut keys: Vec<DNSKEY> = Vec::new();
    let mut ds_records = Vec::new();
    for (i, record) in records(text).into_iter().enumerate() {
        let index = i + 1;
        let fault = |reason: String| AnchorError::Record {
            index,
            record: record.clone(),
            reason,
        };
        let tokens: Vec<&str> = record.split_whitespace().collect();
        let (owner, rest) = tokens
            .split_first()
            .ok_or_else(|| fault("empty record".into()))?;
        if *owner != "." {
            return Err(fault(format!(
                "owner {owner:?}: only the root's keys (\".\") are a trust anchor here"
            )));
        }
        // An optional TTL and an optional class, in either order (RFC 1035 section 5.1).
        let mut rest = rest;
        while let Some((first, tail)) = rest.split_first() {
            if first.bytes().all(|b| b.is_ascii_digit()) || first.eq_ignore_ascii_case("IN") {
                rest = tail;
            } else {
                break;
            }
        }
        let (rtype, rdata) = rest
            .split_first()
            .ok_or_else(|| fault("no record type".into()))?;
        if rtype.eq_ignore_ascii_case("DNSKEY") {
            let key = dnskey(rdata).map_err(fault)?;
            anchors.insert(key.public_key());
            keys.push(key);
        } else if rtype.eq_ignore_ascii_case("DS") {
            ds_records.push((index, record.clone(), ds(rdata).map_err(fault)?));
        } else {
            return Err(fault(format!(
                "type {rtype}: a trust anchor holds DNSKEY (and DS) records"
            )));
        }
    }
    if keys.is_empty() {
        return Err(AnchorError::NoKey);
    }
    for (index, record, (tag, algorithm, digest_type, digest)) in ds_records {
        let matches = keys.iter().any(|key| {
            key.public_key().algorithm() == algorithm
                && key.calculate_key_tag().ok() == Some(tag)
                && key
                    .to_digest(&Name::root(), digest_type)
                    .is_ok_and(|d| d.as_ref() == digest.as_slice())
        });
        if !matches {
            return Err(AnchorError::Record {
                index,
                record,
                reason: "this DS matches none of the file's DNSKEY records".into(),
            });
        }
    }
    Ok(anchors)
}

/// The file's records, each on one line: comments (`;` to the end of the line) removed and
/// lines inside parentheses joined (RFC 1035 section 5.1).
fn records(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    for line in text.lines() {
        let line = line.split(';').next().unwrap_or("");
        for c in line.chars() {
            match c {
                '(' => {
                    depth += 1;
                    current.push(' ');
                }
                ')' => {
                    depth = depth.saturating_sub(1);
                    current.push(' ');
                }
                c => current.push(c),
            }
        }
        if depth == 0 {
            if !current.trim().is_empty() {
                out.push(current.split_whitespace().collect::<Vec<_>>().join(" "));
            }
            current.clear();
        } else {
            current.push(' ');
        }
    }
    if !current.trim().is_empty() {
        out.push(current.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    out
}

/// DNSKEY RDATA in presentation form: flags, protocol (3), algorithm, base64 key
/// (RFC 4034 section 2.2).
fn dnskey(rdata: &[&str]) -> Result<DNSKEY, String> {
    let [flags, protocol, algorithm, key @ ..] = rdata else {
        return Err("DNSKEY needs flags, protocol, algorithm and key".into());
    };
    let flags: u16 = flags
        .parse()
        .map_err(|_| format!("flags {flags:?} is not a number"))?;
    if *protocol != "3" {
        return Err(format!(
            "protocol {protocol} (must be 3, RFC 4034 section 2.1.2)"
        ));
    }
    if flags & 0x0100 == 0 {
        return Err("the Zone Key flag (256) is not set (RFC 4034 section 2.1.1)".into());
    }
    if flags & 0x0001 == 0 {
        return Err(
            "the Secure Entry Point flag (1) is not set: a trust anchor is the root's KSK \
             (flags 257, RFC 4034 section 2.1.1), not a ZSK"
                .into(),
        );
    }
    // hickory asserts on algorithms it cannot verify: refuse them here with a message instead
    // of a panic (an anchor file is input).
    let number: u8 = algorithm
        .parse()
        .map_err(|_| format!("algorithm {algorithm:?} is not a number"))?;
    if !Algorithm::from_u8(number).is_supported() {
        return Err(format!(
            "algorithm {number} is not supported for validation (supported: 5, 7, 8, 10, 13, 14, \
             15; the root uses 8)"
        ));
    }
    // hickory parses the key itself (base64, algorithm, key format): one record at a time, so
    // that its flags stay ours.
    let text = format!(". IN DNSKEY {flags} 3 {algorithm} {}", key.concat());
    let parsed = TrustAnchors::from_str(&text).map_err(|e| format!("{e}"))?;
    let public = parsed
        .get(0)
        .ok_or_else(|| "the key did not parse".to_string())?;
    Ok(DNSKEY::with_flags(flags, public.clone()))
}

/// DS RDATA in presentation form: key tag, algorithm, digest type, hex digest
/// (RFC 4034 section 5.3).
fn ds(rdata: &[&str]) -> Result<(u16, Algorithm, DigestType, Vec<u8>), String> {
    let [tag, algorithm, digest_type, digest @ ..] = rdata else {
        return Err("DS needs key tag, algorithm, digest type and digest".into());
    };
    let tag: u16 = tag
        .parse()
        .map_err(|_| format!("key tag {tag:?} is not a number"))?;
    let algorithm: u8 = algorithm
        .parse()
        .map_err(|_| format!("algorithm {algorithm:?} is not a number"))?;
    let digest_type: u8 = digest_type
        .parse()
        .map_err(|_| format!("digest type {digest_type:?} is not a number"))?;
    let digest = hex(&digest.concat()).ok_or_else(|| "the digest is not hex".to_string())?;
    Ok((
        tag,
        Algorithm::from_u8(algorithm),
        DigestType::from(digest_type),
        digest,
    ))
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An anchor file is input: an algorithm hickory cannot verify, or a ZSK, is refused with
    /// a reason instead of a panic (or a silent "available").
    #[test]
    fn unsupported_algorithms_and_zsks_are_refused() {
        let alg99 = parse(
            ". 300 IN DNSKEY 257 3 99 AwEAAaz/tAm8yTn4Mfeh5eyI96WSVexTBAvkMgJzkKTOiW1vkIbzxeF3\n",
        );
        let err = alg99.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("algorithm 99 is not supported"), "{err}");
        let zsk = parse(
            ". 300 IN DNSKEY 256 3 8 AwEAAaz/tAm8yTn4Mfeh5eyI96WSVexTBAvkMgJzkKTOiW1vkIbzxeF3\n",
        );
        let err = zsk.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("Secure Entry Point"), "{err}");
    }

    // IANA's root KSK-2017 (key tag 20326), as `dig . DNSKEY` prints it, and its DS as
    // published in root-anchors.xml (RFC 7958).
    const KSK_2017: &str = ". 172800 IN DNSKEY 257 3 8 (
        AwEAAaz/tAm8yTn4Mfeh5eyI96WSVexTBAvkMgJzkKTOiW1vkIbzxeF3
        +/4RgWOq7HrxRixHlFlExOLAJr5emLvN7SWXgnLh4+B5xQlNVz8Og8kv
        ArMtNROxVQuCaSnIDdD5LKyWbRd2n9WGe2R8PzgCmr3EgVLrjyBxWezF
        0jLHwVN8efS3rCj/EWgvIWgb9tarpVUDK/b58Da+sqqls3eNbuv7pr+e
        oZG+SrDK6nWeL3c6H5Apxz7LjVc1uTIdsIXxuOLYA4/ilBmSVIzuDWfd
        RUfhHdY6+cn8HFRm+2hM8AnXGXws9555KrUB5qihylGa8subX2Nn6UwN
        R1AkUTV74bU= ) ; KSK; alg = RSASHA256 ; key id = 20326";
    const DS_2017: &str =
        ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D";

    fn refused(text: &str) -> AnchorError {
        match parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_dig_style_root_key_with_its_ds_is_an_anchor() {
        let anchors = parse(&format!("{KSK_2017}\n{DS_2017}\n")).expect("parses");
        assert_eq!(anchors.len(), 1);
        // The built-in default holds the same key.
        let default = TrustAnchors::default();
        assert!(default.contains(anchors.get(0).unwrap()));
    }

    #[test]
    fn a_ds_that_matches_no_key_is_refused() {
        let wrong = DS_2017.replace("E06D", "F06D");
        let e = refused(&format!("{KSK_2017}\n{wrong}\n"));
        assert!(e.to_string().contains("matches none"), "{e}");
    }

    #[test]
    fn only_root_dnskeys_are_accepted() {
        let e = refused(". IN A 192.0.2.1");
        assert!(e.to_string().contains("DNSKEY"), "{e}");
        let e = refused(&KSK_2017.replacen(". ", "example. ", 1));
        assert!(e.to_string().contains("only the root"), "{e}");
        assert!(matches!(parse("; nothing\n"), Err(AnchorError::NoKey)));
    }
}
