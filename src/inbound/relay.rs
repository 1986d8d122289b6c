//! Relay rules (S6, non-negotiable 3: never an open relay). Every RCPT is decided here, and
//! only here.
//!
//! * `inbound` listeners take mail for `inbound.local_domains` only, from anyone.
//! * `outbound` listeners take mail to anywhere, from `outbound.relay_networks` only, or from
//!   a client whose certificate the listener's `client_ca` verified (S2). With
//!   `client_cert = "required"` the certificate is the only way: a client without one is
//!   refused at MAIL with `530 5.7.0`, even from the relay networks (RFC 3207 4, RFC 4954 6:
//!   530 asks for authentication the client has not given).
//!
//! Anything else is refused at RCPT with `554 5.7.1`.
//!
//! A local domain alone is not enough: a local part that carries a route onwards
//! (`victim%remote.example@example.no`, `"victim@remote.example"@example.no`,
//! `remote.example!victim@example.no`) asks the next hop (the internal mail system, which may
//! still honour the "percent hack" or UUCP bang paths) to relay on. RFC 5321 2.3.11 leaves
//! the local part to the host of its domain, and 3.6.1 lets a server decline routed
//! addresses. From clients outside `outbound.relay_networks` such a recipient gets
//! `550 5.7.1`, as with Postfix's default `allow_untrusted_routing = no`, unless
//! `inbound.allow_routed_local_parts` is set.

use crate::config::{ClientCertMode, Config, ListenerConfig, Role};
use crate::smtp::{Address, Reply};
use crate::tls::ClientCertificate;
use std::net::IpAddr;

/// The client of a session, as far as relaying goes.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The connecting address, matched against `outbound.relay_networks`.
    pub ip: IpAddr,
    /// The session is in TLS (after STARTTLS).
    pub tls: bool,
    /// The certificate the client presented and the listener's `client_ca` verified in the
    /// handshake; `None` when it presented none (a bad one fails the handshake).
    pub certificate: Option<&'a ClientCertificate>,
}

/// Why a recipient is refused at RCPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRefusal {
    /// Not a local domain on an `inbound` listener, or a client outside
    /// `outbound.relay_networks` on an `outbound` one.
    RelayDenied,
    /// A local recipient whose local part routes the mail onwards, from an untrusted client.
    RoutedLocalPart,
    /// A TLS client without a certificate on a `client_cert = "required"` listener (S2).
    ClientCertificateRequired,
    /// A plaintext client on a `client_cert = "required"` listener: it needs STARTTLS first
    /// to present a certificate at all (S2).
    ClientCertificateNeedsTls,
}

impl RelayRefusal {
    /// The reply the client gets.
    pub fn reply(self) -> Reply {
        match self {
            RelayRefusal::RelayDenied => Reply::new(554, "5.7.1", "Relay access denied"),
            RelayRefusal::RoutedLocalPart => Reply::new(
                550,
                "5.7.1",
                "Routed address refused: a local part with '@', '%' or '!' is not accepted \
                 from your network",
            ),
            RelayRefusal::ClientCertificateRequired => Reply::new(
                530,
                "5.7.0",
                "Client certificate required: this listener relays only for clients that \
                 present a certificate from its client CA",
            ),
            RelayRefusal::ClientCertificateNeedsTls => Reply::new(
                530,
                "5.7.0",
                "Must issue a STARTTLS command first: this listener requires a client \
                 certificate",
            ),
        }
    }

    /// The refusal's name in the log and the audit log (`relay_denied`, `routed_local_part`,
    /// `client_cert_required`, `client_cert_needs_tls`).
    pub fn label(self) -> &'static str {
        match self {
            RelayRefusal::RelayDenied => "relay_denied",
            RelayRefusal::RoutedLocalPart => "routed_local_part",
            RelayRefusal::ClientCertificateRequired => "client_cert_required",
            RelayRefusal::ClientCertificateNeedsTls => "client_cert_needs_tls",
        }
    }

    /// The metric label of the refusal.
    pub fn reason(self) -> crate::metrics::RejectReason {
        match self {
            RelayRefusal::RelayDenied => crate::metrics::RejectReason::RelayDenied,
            RelayRefusal::RoutedLocalPart => crate::metrics::RejectReason::RoutedAddress,
            RelayRefusal::ClientCertificateRequired | RelayRefusal::ClientCertificateNeedsTls => {
                crate::metrics::RejectReason::ClientCertRequired
            }
        }
    }
}

/// May `client` start a transaction (MAIL) on `listener` at all? Only a `client_cert =
/// "required"` listener refuses here, a client without a verified certificate (S2).
pub fn check_client(
    config: &Config,
    listener: &ListenerConfig,
    client: &Client<'_>,
) -> Result<(), RelayRefusal> {
    relay_client(config, listener, client).map(|_| ())
}

/// Is `client` one the relay trusts on `listener` (may relay, may use routed local parts)?
/// `Err` when the listener demands a certificate the client has not presented.
fn relay_client(
    config: &Config,
    listener: &ListenerConfig,
    client: &Client<'_>,
) -> Result<bool, RelayRefusal> {
    // Only a listener with `client_ca` asks for (and verifies) certificates.
    let certified = listener.client_auth.is_some() && client.certificate.is_some();
    match listener.client_auth.as_ref().map(|a| a.mode) {
        Some(ClientCertMode::Required) if certified => Ok(true),
        Some(ClientCertMode::Required) if client.tls => {
            Err(RelayRefusal::ClientCertificateRequired)
        }
        Some(ClientCertMode::Required) => Err(RelayRefusal::ClientCertificateNeedsTls),
        Some(ClientCertMode::Optional) | None => Ok(certified || config.is_relay_client(client.ip)),
    }
}

/// May `client`, connected to `listener`, send mail to `recipient`?
pub fn check_recipient(
    config: &Config,
    listener: &ListenerConfig,
    client: &Client<'_>,
    recipient: &Address,
) -> Result<(), RelayRefusal> {
    let trusted = relay_client(config, listener, client)?;
    let allowed = match listener.role {
        Role::Inbound => config.is_local_domain(recipient.domain()),
        Role::Outbound => trusted,
    };
    if !allowed {
        return Err(RelayRefusal::RelayDenied);
    }
    if !trusted && !config.inbound.allow_routed_local_parts && is_routed(recipient.local_part()) {
        return Err(RelayRefusal::RoutedLocalPart);
    }
    Ok(())
}

/// Does a local part (as sent, quoted form included) carry a route: `@` (only possible quoted),
/// `%` (the "percent hack") or `!` (a UUCP bang path)? Escaped or not, quoted or not: the next
/// hop may unquote it before it looks.
fn is_routed(local_part: &str) -> bool {
    local_part.contains(['@', '%', '!'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Domain;

    fn config() -> Config {
        config_with("")
    }

    fn config_with(inbound_extra: &str) -> Config {
        Config::from_toml(
            &format!(
                r#"
            [server]
            data_dir = "/tmp/x"
            [[listener]]
            bind = "127.0.0.1:0"
            role = "inbound"
            [inbound]
            local_domains = ["example.no"]
            {inbound_extra}
            [outbound]
            relay_networks = ["10.0.0.0/8", "2001:db8::/32"]
            "#
            ),
            "test.toml",
        )
        .unwrap()
    }

    fn listener(role: Role) -> ListenerConfig {
        ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            role,
            require_tls: false,
            client_auth: None,
        }
    }

    fn client(ip: IpAddr) -> Client<'static> {
        Client {
            ip,
            tls: false,
            certificate: None,
        }
    }

    fn at(domain: &str) -> Address {
        Address::new("user", Domain::parse(domain).unwrap()).unwrap()
    }

    #[test]
    fn inbound_accepts_local_domains_only() {
        let c = config();
        let anyone: IpAddr = "203.0.113.9".parse().unwrap();
        let local = at("EXAMPLE.no.");
        let other = at("gmail.com");
        let sub = at("sub.example.no");
        assert!(check_recipient(&c, &listener(Role::Inbound), &client(anyone), &local).is_ok());
        let refused =
            check_recipient(&c, &listener(Role::Inbound), &client(anyone), &other).unwrap_err();
        assert_eq!(refused, RelayRefusal::RelayDenied);
        let reply = refused.reply();
        assert_eq!(
            (reply.code, reply.enhanced.map(|e| e.to_string())),
            (554, Some("5.7.1".into()))
        );
        assert!(check_recipient(&c, &listener(Role::Inbound), &client(anyone), &sub).is_err());
    }

    #[test]
    fn outbound_accepts_relay_networks_only() {
        let c = config();
        let far = at("gmail.com");
        let local = at("example.no");
        for inside in ["10.1.2.3", "::ffff:10.9.9.9", "2001:db8::25"] {
            let ip: IpAddr = inside.parse().unwrap();
            assert!(
                check_recipient(&c, &listener(Role::Outbound), &client(ip), &far).is_ok(),
                "{inside}"
            );
        }
        for outside in ["11.0.0.1", "127.0.0.1", "2001:db9::1"] {
            let ip: IpAddr = outside.parse().unwrap();
            assert!(
                check_recipient(&c, &listener(Role::Outbound), &client(ip), &far).is_err(),
                "{outside}"
            );
            assert!(
                check_recipient(&c, &listener(Role::Outbound), &client(ip), &local).is_err(),
                "{outside}"
            );
        }
    }

    #[test]
    fn routed_local_parts_are_refused_from_untrusted_clients_only() {
        let c = config();
        let anyone: IpAddr = "203.0.113.9".parse().unwrap();
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        for routed in [
            "victim%remote.example@example.no",
            "\"victim@remote.example\"@example.no",
            "\"victim\\@remote.example\"@example.no",
            "remote.example!victim@example.no",
            "\"victim%remote\"@example.no",
        ] {
            let a = Address::parse(routed).unwrap();
            assert_eq!(
                check_recipient(&c, &listener(Role::Inbound), &client(anyone), &a),
                Err(RelayRefusal::RoutedLocalPart),
                "{routed}"
            );
            assert!(
                check_recipient(&c, &listener(Role::Inbound), &client(inside), &a).is_ok(),
                "{routed}"
            );
            assert!(
                check_recipient(&c, &listener(Role::Outbound), &client(inside), &a).is_ok(),
                "{routed}"
            );
        }
        let plain = Address::parse("first.last+tag@example.no").unwrap();
        assert!(check_recipient(&c, &listener(Role::Inbound), &client(anyone), &plain).is_ok());
        let reply = RelayRefusal::RoutedLocalPart.reply();
        assert_eq!(
            (reply.code, reply.enhanced.map(|e| e.to_string())),
            (550, Some("5.7.1".into()))
        );

        let allowing = config_with("allow_routed_local_parts = true");
        let a = Address::parse("victim%remote.example@example.no").unwrap();
        assert!(check_recipient(&allowing, &listener(Role::Inbound), &client(anyone), &a).is_ok());
        // Allowing routes never opens relaying to other domains.
        let far = Address::parse("victim%example.no@gmail.com").unwrap();
        assert_eq!(
            check_recipient(&allowing, &listener(Role::Inbound), &client(anyone), &far),
            Err(RelayRefusal::RelayDenied)
        );
    }

    /// S2 with S6: a verified certificate lets a client relay on an `optional` listener from
    /// anywhere; `required` refuses everyone without one, relay networks included, at MAIL
    /// (`check_client`) and again at RCPT.
    #[test]
    fn client_certificates_grant_relaying_and_can_be_required() {
        let c = config();
        let cert = ClientCertificate {
            subject: "CN=exchange.example.no".into(),
            issuer: "CN=Bank CA".into(),
            serial: "01".into(),
        };
        let with_ca = |mode| ListenerConfig {
            client_auth: Some(crate::config::ClientAuth {
                ca: "/etc/tlsgate/client-ca.pem".into(),
                mode,
            }),
            ..listener(Role::Outbound)
        };
        let optional = with_ca(ClientCertMode::Optional);
        let required = with_ca(ClientCertMode::Required);
        let far = at("gmail.com");
        let outside: IpAddr = "203.0.113.9".parse().unwrap();
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        let certified = |ip| Client {
            ip,
            tls: true,
            certificate: Some(&cert),
        };
        let tls_only = |ip| Client {
            ip,
            tls: true,
            certificate: None,
        };

        // optional: the certificate in addition to relay_networks.
        assert!(check_recipient(&c, &optional, &certified(outside), &far).is_ok());
        assert!(check_recipient(&c, &optional, &tls_only(inside), &far).is_ok());
        assert_eq!(
            check_recipient(&c, &optional, &tls_only(outside), &far),
            Err(RelayRefusal::RelayDenied)
        );
        assert!(check_client(&c, &optional, &client(outside)).is_ok());

        // required: the certificate instead of relay_networks.
        assert!(check_client(&c, &required, &certified(outside)).is_ok());
        assert!(check_recipient(&c, &required, &certified(outside), &far).is_ok());
        assert_eq!(
            check_client(&c, &required, &tls_only(inside)),
            Err(RelayRefusal::ClientCertificateRequired)
        );
        assert_eq!(
            check_recipient(&c, &required, &tls_only(inside), &far),
            Err(RelayRefusal::ClientCertificateRequired)
        );
        assert_eq!(
            check_client(&c, &required, &client(inside)),
            Err(RelayRefusal::ClientCertificateNeedsTls)
        );
        for refusal in [
            RelayRefusal::ClientCertificateRequired,
            RelayRefusal::ClientCertificateNeedsTls,
        ] {
            let reply = refusal.reply();
            assert_eq!(
                (reply.code, reply.enhanced.map(|e| e.to_string())),
                (530, Some("5.7.0".into()))
            );
        }

        // A certificate counts only where the listener verifies them (client_ca).
        assert_eq!(
            check_recipient(&c, &listener(Role::Outbound), &certified(outside), &far),
            Err(RelayRefusal::RelayDenied)
        );
    }
}
