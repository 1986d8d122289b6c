//! Mail loop detection (RFC 5321 6.3): a message that arrives with `limits.hop_count_limit`
//! or more `Received:` header fields has passed that many relays and is refused after DATA
//! with `554 5.4.6` (RFC 3463 X.4.6 "routing loop detected"), as Postfix's `hopcount_limit`
//! (default 50) does. Without it a next hop that routes back to us (say `inbound.next_hop`
//! pointing at our own listener) would pass one message round for ever, growing by a
//! `Received:` field each time. Pure: no I/O.
//!
//! Only the fields the message arrives with are counted: tlsgate's own `Received:` is added
//! at delivery, so a message accepted here leaves with at most the limit.

use crate::smtp::headers::count_fields;
use crate::smtp::Reply;

/// Why a message is refused as looping: how many `Received:` fields it came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyHops {
    /// The `Received:` fields in the message's header section.
    pub received: usize,
}

impl TooManyHops {
    /// The reply after the final dot: permanent (RFC 5321 6.3: a loop does not heal by
    /// retrying the same route), RFC 3463 X.4.6.
    pub fn reply(self) -> Reply {
        Reply::new(
            554,
            "5.4.6",
            format!(
                "Too many hops: {} Received: header fields (mail loop?)",
                self.received
            ),
        )
    }
}

/// `Err` when `message` (header section and body as received in DATA) carries `limit` or
/// more `Received:` header fields (RFC 5321 6.3; Postfix refuses at `count >= hopcount_limit`).
pub fn check(message: &[u8], limit: usize) -> Result<(), TooManyHops> {
    let received = count_fields(message, b"received");
    if received >= limit {
        Err(TooManyHops { received })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_received(n: usize) -> Vec<u8> {
        let mut m = b"Received: from a\r\n\tby b; Thu, 1 Jan 1970 00:00:00 +0000\r\n".repeat(n);
        m.extend_from_slice(b"Subject: x\r\n\r\nReceived: in the body\r\n");
        m
    }

    #[test]
    fn the_limit_itself_is_refused_one_less_is_not() {
        assert_eq!(check(&with_received(49), 50), Ok(()));
        let refused = check(&with_received(50), 50).unwrap_err();
        assert_eq!(refused, TooManyHops { received: 50 });
        assert_eq!(
            refused.reply().to_string(),
            "554 5.4.6 Too many hops: 50 Received: header fields (mail loop?)"
        );
        assert_eq!(check(&with_received(0), 1), Ok(()));
        assert!(check(&with_received(1), 1).is_err());
    }
}
