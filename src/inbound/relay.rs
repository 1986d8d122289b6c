//! Relay rules (S6, non-negotiable 3: never an open relay). Every RCPT is decided here, and
//! only here.
//!
//! * `inbound` listeners take mail for `inbound.local_domains` only, from anyone.
//! * `outbound` listeners take mail to anywhere, from `outbound.relay_networks` only.
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

use crate::config::{Config, Role};
use crate::smtp::{Address, Reply};
use std::net::IpAddr;

/// Why a recipient is refused at RCPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRefusal {
    /// Not a local domain on an `inbound` listener, or a client outside
    /// `outbound.relay_networks` on an `outbound` one.
    RelayDenied,
    /// A local recipient whose local part routes the mail onwards, from an untrusted client.
    RoutedLocalPart,
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
        }
    }

    /// The refusal's name in the log and the audit log (`relay_denied`, `routed_local_part`).
    pub fn label(self) -> &'static str {
        match self {
            RelayRefusal::RelayDenied => "relay_denied",
            RelayRefusal::RoutedLocalPart => "routed_local_part",
        }
    }

    /// The metric label of the refusal.
    pub fn reason(self) -> crate::metrics::RejectReason {
        match self {
            RelayRefusal::RelayDenied => crate::metrics::RejectReason::RelayDenied,
            RelayRefusal::RoutedLocalPart => crate::metrics::RejectReason::RoutedAddress,
        }
    }
}

/// May `client_ip`, connected to a `role` listener, send mail to `recipient`?
pub fn check_recipient(
    config: &Config,
    role: Role,
    client_ip: IpAddr,
    recipient: &Address,
) -> Result<(), RelayRefusal> {
    let trusted = config.is_relay_client(client_ip);
    let allowed = match role {
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
        assert!(check_recipient(&c, Role::Inbound, anyone, &local).is_ok());
        let refused = check_recipient(&c, Role::Inbound, anyone, &other).unwrap_err();
        assert_eq!(refused, RelayRefusal::RelayDenied);
        let reply = refused.reply();
        assert_eq!(
            (reply.code, reply.enhanced.map(|e| e.to_string())),
            (554, Some("5.7.1".into()))
        );
        assert!(check_recipient(&c, Role::Inbound, anyone, &sub).is_err());
    }

    #[test]
    fn outbound_accepts_relay_networks_only() {
        let c = config();
        let far = at("gmail.com");
        let local = at("example.no");
        for inside in ["10.1.2.3", "::ffff:10.9.9.9", "2001:db8::25"] {
            let ip: IpAddr = inside.parse().unwrap();
            assert!(
                check_recipient(&c, Role::Outbound, ip, &far).is_ok(),
                "{inside}"
            );
        }
        for outside in ["11.0.0.1", "127.0.0.1", "2001:db9::1"] {
            let ip: IpAddr = outside.parse().unwrap();
            assert!(
                check_recipient(&c, Role::Outbound, ip, &far).is_err(),
                "{outside}"
            );
            assert!(
                check_recipient(&c, Role::Outbound, ip, &local).is_err(),
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
                check_recipient(&c, Role::Inbound, anyone, &a),
                Err(RelayRefusal::RoutedLocalPart),
                "{routed}"
            );
            assert!(
                check_recipient(&c, Role::Inbound, inside, &a).is_ok(),
                "{routed}"
            );
            assert!(
                check_recipient(&c, Role::Outbound, inside, &a).is_ok(),
                "{routed}"
            );
        }
        let plain = Address::parse("first.last+tag@example.no").unwrap();
        assert!(check_recipient(&c, Role::Inbound, anyone, &plain).is_ok());
        let reply = RelayRefusal::RoutedLocalPart.reply();
        assert_eq!(
            (reply.code, reply.enhanced.map(|e| e.to_string())),
            (550, Some("5.7.1".into()))
        );

        let allowing = config_with("allow_routed_local_parts = true");
        let a = Address::parse("victim%remote.example@example.no").unwrap();
        assert!(check_recipient(&allowing, Role::Inbound, anyone, &a).is_ok());
        // Allowing routes never opens relaying to other domains.
        let far = Address::parse("victim%example.no@gmail.com").unwrap();
        assert_eq!(
            check_recipient(&allowing, Role::Inbound, anyone, &far),
            Err(RelayRefusal::RelayDenied)
        );
    }
}
