//! Relay rules (S6, non-negotiable 3: never an open relay).
//!
//! * `inbound` listeners take mail for `inbound.local_domains` only, from anyone.
//! * `outbound` listeners take mail to anywhere, from `outbound.relay_networks` only.
//!
//! Everything else is refused at RCPT with `554 5.7.1`.

use crate::config::{Config, Role};
use crate::domain::Domain;
use crate::smtp::Reply;
use std::net::IpAddr;

pub fn check_recipient(
    config: &Config,
    role: Role,
    client_ip: IpAddr,
    recipient_domain: &Domain,
) -> Result<(), Reply> {
    let allowed = match role {
        Role::Inbound => config.is_local_domain(recipient_domain),
        Role::Outbound => config.is_relay_client(client_ip),
    };
    if allowed {
        Ok(())
    } else {
        Err(Reply::new(554, "5.7.1", "Relay access denied"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml(
            r#"
            [server]
            data_dir = "/tmp/x"
            [[listener]]
            bind = "127.0.0.1:0"
            role = "inbound"
            [inbound]
            local_domains = ["example.no"]
            [outbound]
            relay_networks = ["10.0.0.0/8", "2001:db8::/32"]
            "#,
            "test.toml",
        )
        .unwrap()
    }

    #[test]
    fn inbound_accepts_local_domains_only() {
        let c = config();
        let anyone: IpAddr = "203.0.113.9".parse().unwrap();
        let local = Domain::parse("EXAMPLE.no.").unwrap();
        let other = Domain::parse("gmail.com").unwrap();
        let sub = Domain::parse("sub.example.no").unwrap();
        assert!(check_recipient(&c, Role::Inbound, anyone, &local).is_ok());
        let refused = check_recipient(&c, Role::Inbound, anyone, &other).unwrap_err();
        assert_eq!(
            (refused.code, refused.enhanced.map(|e| e.to_string())),
            (554, Some("5.7.1".into()))
        );
        assert!(check_recipient(&c, Role::Inbound, anyone, &sub).is_err());
    }

    #[test]
    fn outbound_accepts_relay_networks_only() {
        let c = config();
        let far = Domain::parse("gmail.com").unwrap();
        let local = Domain::parse("example.no").unwrap();
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
}
