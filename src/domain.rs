//! The vocabulary every layer shares: what a notification is, which channel and
//! priority it has, and the status machine it moves through.
//!
//! Nothing here knows about HTTP, a database or the provider; the API parses into
//! these types, the store persists them and the dispatcher acts on them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A request's identity: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(Uuid);

impl RequestId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for RequestId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Declares a string-backed enum with its wire names, parsing and display in one place.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} `{other}`; expected one of: {}",
                        stringify!($name).to_lowercase(),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

wire_enum! {
    /// The delivery channel, sent to the provider as `type`.
    Channel { Email => "email", Sms => "sms", Push => "push" }
}

wire_enum! {
    /// Dispatch order: every due `High` goes before any due `Normal`, and so on.
    /// The declaration order is the dispatch order (see [`Priority::rank`]).
    Priority { High => "high", Normal => "normal", Low => "low" }
}

wire_enum! {
    /// Where a request stands. Transitions only move forward:
    /// `Queued → Processing → Sent | Failed` (a retry keeps it `Processing`).
    Status { Queued => "queued", Processing => "processing", Sent => "sent", Failed => "failed" }
}

impl Priority {
    /// The byte that leads this priority's outbox keys; lower dispatches first.
    pub fn rank(self) -> u8 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

impl Status {
    /// `Sent` and `Failed` are final: nothing moves a request out of them.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Sent | Status::Failed)
    }
}

/// A validated notification, as accepted from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub to: String,
    pub message: String,
    pub channel: Channel,
    pub priority: Priority,
}

/// Milliseconds since the Unix epoch: the one clock stored on disk.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for channel in Channel::ALL {
            assert_eq!(channel.as_str().parse::<Channel>(), Ok(*channel));
        }
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(*status));
        }
        assert!(
            "fax"
                .parse::<Channel>()
                .unwrap_err()
                .contains("email, sms, push")
        );
    }

    #[test]
    fn priority_rank_follows_dispatch_order() {
        let ranks: Vec<u8> = Priority::ALL.iter().map(|p| p.rank()).collect();
        assert_eq!(ranks, vec![0, 1, 2]);
    }

    #[test]
    fn request_ids_sort_by_creation() {
        let first = RequestId::new();
        let second = RequestId::new();
        assert!(first < second);
        assert_eq!(first.to_string().parse::<RequestId>().unwrap(), first);
    }
}
