use super::*;
use crate::smtp::address::Address;

fn parse(line: &str) -> Result<Command, CommandError> {
    parse_command(line.as_bytes())
}

fn mail(line: &str) -> MailFrom {
    match parse(line) {
        Ok(Command::Mail(m)) => m,
        other => panic!("{line}: {other:?}"),
    }
}

fn rcpt(line: &str) -> RcptTo {
    match parse(line) {
        Ok(Command::Rcpt(r)) => r,
        other => panic!("{line}: {other:?}"),
    }
}

fn code(line: &str) -> (u16, String) {
    let r = parse(line).unwrap_err().reply();
    (
        r.code,
        r.enhanced.map(|e| e.to_string()).unwrap_or_default(),
    )
}

#[test]
fn simple_commands_case_insensitive() {
    assert_eq!(
        parse("ehlo client.example").unwrap(),
        Command::Ehlo("client.example".into())
    );
    assert_eq!(
        parse("HELO [192.0.2.1]").unwrap(),
        Command::Helo("[192.0.2.1]".into())
    );
    assert_eq!(parse("data").unwrap(), Command::Data);
    assert_eq!(parse("Quit").unwrap(), Command::Quit);
    assert_eq!(parse("RSET").unwrap(), Command::Rset);
    assert_eq!(parse("NOOP anything goes").unwrap(), Command::Noop);
    assert_eq!(parse("StartTLS").unwrap(), Command::StartTls);
    assert_eq!(parse("HELP").unwrap(), Command::Help(None));
    assert_eq!(parse("VRFY bob").unwrap(), Command::Vrfy("bob".into()));
    assert_eq!(
        parse("BDAT 1000 LAST").unwrap(),
        Command::Bdat {
            size: 1000,
            last: true
        }
    );
    assert_eq!(
        parse("BDAT 5").unwrap(),
        Command::Bdat {
            size: 5,
            last: false
        }
    );
}

#[test]
fn arguments_where_none_belong_and_missing_ones() {
    for line in [
        "DATA x",
        "RSET now",
        "QUIT please",
        "STARTTLS x",
        "EHLO",
        "HELO  ",
        "VRFY",
        "BDAT",
        "BDAT x",
        "BDAT 1 FIRST",
    ] {
        assert_eq!(code(line), (501, "5.5.4".into()), "{line}");
    }
    assert_eq!(code("EHLO bad\u{1}name"), (501, "5.5.4".into()));
    assert_eq!(code(""), (501, "5.5.4".into()));
    assert_eq!(code("XYZZY"), (500, "5.5.2".into()));
    assert_eq!(
        parse_command(b"MAIL FROM:<\xff@x.no>").unwrap_err(),
        CommandError::InvalidUtf8
    );
}

#[test]
fn mail_from_with_all_parameters() {
    let m = mail("MAIL FROM:<a@Example.NO> SIZE=12345 BODY=8bitmime RET=FULL ENVID=QQ+2B1 SMTPUTF8 REQUIRETLS");
    assert_eq!(
        m.sender,
        ReversePath::Address(Address::parse("a@example.no").unwrap())
    );
    assert_eq!(m.size, Some(12345));
    assert_eq!(m.body, Some(BodyType::EightBitMime));
    assert_eq!(m.ret, Some(Ret::Full));
    assert_eq!(m.envid.as_deref(), Some("QQ+1"));
    assert!(m.smtputf8 && m.requiretls);
}

#[test]
fn mail_from_variants() {
    assert_eq!(mail("MAIL FROM:<>").sender, ReversePath::Null);
    assert_eq!(
        mail("mail from: <a@b.no>")
            .sender
            .address()
            .unwrap()
            .to_string(),
        "a@b.no"
    );
    assert_eq!(
        mail("MAIL FROM:<@r.no:a@b.no>")
            .sender
            .address()
            .unwrap()
            .to_string(),
        "a@b.no"
    );
    assert_eq!(code("MAIL FROM:a@b.no"), (553, "5.1.7".into()));
    assert_eq!(code("MAIL FROM:<a@b.no"), (553, "5.1.7".into()));
    assert_eq!(code("MAIL FROM:<"), (553, "5.1.7".into()));
    assert_eq!(code("MAIL TO:<a@b.no>"), (501, "5.5.4".into()));
    assert_eq!(code("MAIL FROM:<a@b.no>SIZE=1"), (501, "5.5.4".into()));
    assert_eq!(code("MAIL FROM:<a@[192.0.2.1]>"), (553, "5.1.7".into()));
}

#[test]
fn strict_parameters() {
    for line in [
        "MAIL FROM:<a@b.no> FOO=1",
        "MAIL FROM:<a@b.no> SIZE=abc",
        "MAIL FROM:<a@b.no> SIZE=",
        "MAIL FROM:<a@b.no> SIZE=99999999999999999999999",
        "MAIL FROM:<a@b.no> SIZE=1 size=2",
        "MAIL FROM:<a@b.no> BODY=9BIT",
        "MAIL FROM:<a@b.no> RET=ALL",
        "MAIL FROM:<a@b.no> SMTPUTF8=yes",
        "MAIL FROM:<a@b.no> ENVID=bad+zz",
        "MAIL FROM:<a@b.no> ENVID=bad+2",
        "MAIL FROM:<a@b.no> NOTIFY=NEVER",
        "RCPT TO:<a@b.no> NOTIFY=NEVER,DELAY",
        "RCPT TO:<a@b.no> NOTIFY=SUCCESS,SUCCESS",
        "RCPT TO:<a@b.no> NOTIFY=SOMETIMES",
        "RCPT TO:<a@b.no> NOTIFY",
        "RCPT TO:<a@b.no> ORCPT=noseparator",
        "RCPT TO:<a@b.no> ORCPT=rfc822;",
        "RCPT TO:<a@b.no> SIZE=1",
        "RCPT TO:<a@b.no> =x",
    ] {
        assert_eq!(code(line), (555, "5.5.4".into()), "{line}");
    }
    let envid = format!("MAIL FROM:<a@b.no> ENVID={}", "x".repeat(101));
    assert_eq!(code(&envid), (555, "5.5.4".into()));
    let many = format!("MAIL FROM:<a@b.no>{}", " SMTPUTF8".repeat(17));
    assert_eq!(code(&many), (555, "5.5.4".into()));
    // Long unknown keys are not echoed whole.
    let long_key = format!("MAIL FROM:<a@b.no> {}=1", "K".repeat(5000));
    let reply = parse(&long_key).unwrap_err().reply();
    assert!(reply.text.len() < 100, "{}", reply.text);
}

#[test]
fn rcpt_to_with_dsn_parameters() {
    let r = rcpt("RCPT TO:<b@c.no> NOTIFY=success,Failure ORCPT=rfc822;b+40c.no");
    assert!(r.notify.explicit && r.notify.success && r.notify.failure && !r.notify.delay);
    assert_eq!(
        r.orcpt,
        Some(OriginalRecipient {
            addr_type: "rfc822".into(),
            address: "b@c.no".into()
        })
    );
    let never = rcpt("RCPT TO:<b@c.no> NOTIFY=NEVER");
    assert!(never.notify.never);
    let default = rcpt("RCPT TO:<b@c.no>");
    assert!(!default.notify.explicit);
    assert_eq!(
        rcpt("RCPT TO:<Postmaster>").recipient,
        ForwardPath::Postmaster
    );
    assert_eq!(code("RCPT TO:<>"), (553, "5.1.3".into()));
    assert_eq!(code("RCPT TO:<no-domain>"), (553, "5.1.3".into()));
}

#[test]
fn utf8_addresses_need_smtputf8() {
    assert_eq!(code("MAIL FROM:<støle@bøler.no>"), (553, "5.6.7".into()));
    let m = mail("MAIL FROM:<støle@bøler.no> SMTPUTF8");
    assert_eq!(
        m.sender.address().unwrap().domain().as_str(),
        "xn--bler-gra.no"
    );
}

#[test]
fn xtext() {
    assert_eq!(decode_xtext("a+2Bb+3Dc", 100).as_deref(), Some("a+b=c"));
    assert_eq!(decode_xtext("a+2b", 100), None, "hex must be upper case");
    assert_eq!(decode_xtext("a=b", 100), None);
    assert_eq!(decode_xtext("abc", 2), None);
    assert_eq!(decode_xtext("+", 10), None);
}

#[test]
fn hostile_inputs_do_not_panic() {
    let inputs: Vec<Vec<u8>> = vec![
        b"MAIL FROM:<\0@x.no>".to_vec(),
        b"RCPT TO:<\"\\".to_vec(),
        b"MAIL FROM:<\"a>b".to_vec(),
        vec![b'M'; 10000],
        b"MAIL FROM:<a@b.no> SIZE=1 =".to_vec(),
        "RCPT TO:<a@b.no> ORCPT=rfc822;ø".as_bytes().to_vec(),
        b"BDAT 99999999999999999999999".to_vec(),
        b"MAIL FROM:<a@\xc3>".to_vec(),
    ];
    for input in inputs {
        let _ = parse_command(&input).map_err(|e| e.reply());
    }
}
