//! Which of the two encodings a peer speaks, and how a runner tells them
//! apart from a connection's first frame.
//!
//! Both wires share the frame (type byte, 24-bit big-endian length) and the
//! type numbers; only the payload differs: one Cap'n Proto message in its
//! standard stream encoding (extplug's own), or one FlatBuffers message
//! (Apache APISIX's, the schema of `api7/ext-plugin-proto`).

/// The payload encoding of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// extplug's own wire: Cap'n Proto payloads (`schema/ext_plugin.capnp`).
    Capnp,
    /// Apache APISIX's wire: FlatBuffers payloads (`schema/ext-plugin.fbs`).
    Apisix,
}

impl Protocol {
    /// The name used in configuration and in `EXTPLUG_RUNNER_PROTOCOL`:
    /// `capnp` or `apisix`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Capnp => "capnp",
            Protocol::Apisix => "apisix",
        }
    }

    /// The protocol named `name` (`capnp` or `apisix`, as written: the
    /// names are lower case).
    pub fn from_name(name: &str) -> Option<Protocol> {
        match name {
            "capnp" => Some(Protocol::Capnp),
            "apisix" => Some(Protocol::Apisix),
            _ => None,
        }
    }

    /// The protocol of a connection whose first frame carries `payload`.
    ///
    /// The rule (PROTOCOL.md, section 7.1):
    /// 1. The first 4 bytes, as a little-endian u32, are 0: **Cap'n Proto**.
    ///    That u32 is a stream message's segment count minus one, 0 for the
    ///    one-segment messages extplug's hosts send; a FlatBuffers message
    ///    starts with the offset of its root table, counted from the start,
    ///    which is never 0 (the root table cannot be at byte 0: the offset
    ///    itself is there).
    /// 2. Otherwise, when the payload is exactly a Cap'n Proto stream
    ///    message of several segments (at most 512, capnp's own limit: the
    ///    segment table is complete and the segments it declares end
    ///    exactly at the end of the payload): **Cap'n Proto**, so that
    ///    other Cap'n Proto implementations that split messages still work.
    /// 3. Otherwise: **APISIX**.
    ///
    /// A payload of fewer than 4 bytes is neither a Cap'n Proto message
    /// (at least 8 bytes) nor a FlatBuffers one (at least a root offset
    /// and a table): Cap'n Proto, extplug's own, is assumed, whose runner
    /// answers it with an ERROR and keeps the connection.
    pub fn detect(payload: &[u8]) -> Protocol {
        let Some(first) = payload.get(..4) else {
            return Protocol::Capnp;
        };
        let first = u32::from_le_bytes([first[0], first[1], first[2], first[3]]);
        if first == 0 || is_multi_segment_capnp(payload, first) {
            Protocol::Capnp
        } else {
            Protocol::Apisix
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `payload` is exactly one Cap'n Proto stream message of
/// `minus_one + 1` segments: its table (a u32 count minus one, a u32 size
/// in words per segment, padded to 8 bytes) and the segments fill it.
fn is_multi_segment_capnp(payload: &[u8], minus_one: u32) -> bool {
    // capnp's reader refuses more than 512 segments.
    if minus_one >= 512 {
        return false;
    }
    let segments = minus_one as usize + 1;
    // 4 bytes of count, 4 per size, rounded up to a word.
    let table = (4 + 4 * segments).div_ceil(8) * 8;
    let Some(sizes) = payload.get(4..4 + 4 * segments) else {
        return false;
    };
    let words: u64 = sizes
        .chunks_exact(4)
        .map(|s| u64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]])))
        .sum();
    table as u64 + words * 8 == payload.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for p in [Protocol::Capnp, Protocol::Apisix] {
            assert_eq!(Protocol::from_name(p.name()), Some(p));
            assert_eq!(p.to_string(), p.name());
        }
        for bad in ["", "APISIX", "flatbuffers", " capnp"] {
            assert_eq!(Protocol::from_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_zero_first_word_is_capnp_and_short_payloads_default_to_it() {
        assert_eq!(Protocol::detect(&[0; 16]), Protocol::Capnp);
        for short in [&[][..], &[12], &[12, 0, 0]] {
            assert_eq!(Protocol::detect(short), Protocol::Capnp, "{short:?}");
        }
    }

    #[test]
    fn a_complete_multi_segment_table_is_capnp_and_anything_else_apisix() {
        // Two segments of 1 and 2 words: table of 12 bytes padded to 16.
        let mut two = vec![1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        two.extend([0u8; 24]);
        assert_eq!(Protocol::detect(&two), Protocol::Capnp);
        // One byte more or less: not that message.
        two.push(0);
        assert_eq!(Protocol::detect(&two), Protocol::Apisix);
        two.truncate(two.len() - 2);
        assert_eq!(Protocol::detect(&two), Protocol::Apisix);
        // A root offset of 12 followed by vtable bytes.
        assert_eq!(
            Protocol::detect(&[12, 0, 0, 0, 6, 0, 8, 0, 4, 0, 0, 0, 6, 0, 0, 0]),
            Protocol::Apisix
        );
    }
}
