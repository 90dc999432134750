//! The ids of generated plays, stored inline.

use std::fmt;
use std::ops::Deref;

use super::random::mix64;
use super::Listener;

/// Song ids depend only on the catalogue rank, so every seed shares one catalogue.
const CATALOGUE_SALT: u64 = 0x2545_f491_4f6c_dd1d;

/// An id of exactly `LEN` ASCII characters, stored inline: a week of heavy listeners is
/// millions of plays, and an id on the heap costs each an allocation or a shared count (a
/// cache miss per play). Reads as a `&str`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InlineId<const LEN: usize>([u8; LEN]);

/// 32 hex digits (128 bits), unique per (seed, listener, play).
pub type EventId = InlineId<32>;

/// `s-` and 16 hex digits, the same for a catalogue song whatever the seed; the ids do not
/// sort in popularity order.
pub type SongId = InlineId<18>;

impl<const LEN: usize> InlineId<LEN> {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

impl<const LEN: usize> Deref for InlineId<LEN> {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const LEN: usize> fmt::Display for InlineId<LEN> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl<const LEN: usize> fmt::Debug for InlineId<LEN> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), formatter)
    }
}

/// The id of a listener's `seq`-th play. `salt` comes from the seed.
pub(super) fn event_id(salt: u64, listener: &Listener, seq: u32) -> EventId {
    debug_assert!(listener.tier < 256 && seq < 1 << 24);
    // The first half is a bijective mix of the play's coordinates, hence unique.
    let coordinates =
        ((listener.tier as u64) << 56) | (u64::from(listener.index) << 24) | u64::from(seq);
    let high = mix64(coordinates ^ salt);
    let low = mix64(coordinates.wrapping_add(salt.rotate_left(17)));
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(&hex_digits(high));
    id[16..].copy_from_slice(&hex_digits(low));
    InlineId(id)
}

/// The id of the song at `rank` in the catalogue's popularity.
pub(super) fn song_id(rank: u32) -> SongId {
    let mut id = [0u8; 18];
    id[..2].copy_from_slice(b"s-");
    id[2..].copy_from_slice(&hex_digits(mix64(u64::from(rank) ^ CATALOGUE_SALT)));
    InlineId(id)
}

/// The 16 lowercase hex digits of `value`, without a loop or the formatting machinery (each
/// costs more than the rest of a play in a test build).
fn hex_digits(value: u64) -> [u8; 16] {
    let high = nibbles_to_bytes((value >> 32) as u32);
    let low = nibbles_to_bytes(value as u32);
    let mut digits = [0u8; 16];
    digits[..8].copy_from_slice(&high.to_be_bytes());
    digits[8..].copy_from_slice(&low.to_be_bytes());
    digits
}

/// The 8 hex digits of `value` as the bytes of a u64, the most significant digit in the top
/// byte.
fn nibbles_to_bytes(value: u32) -> u64 {
    // Spread the nibbles one per byte: halves, then quarters, then eighths.
    let mut spread = u64::from(value);
    spread = ((spread & 0xffff_0000) << 16) | (spread & 0x0000_ffff);
    spread = ((spread & 0x0000_ff00_0000_ff00) << 8) | (spread & 0x0000_00ff_0000_00ff);
    spread = ((spread & 0x00f0_00f0_00f0_00f0) << 4) | (spread & 0x000f_000f_000f_000f);
    // 1 in each byte holding 10..=15, which go to 'a'..='f' rather than past '9'.
    let letters = ((spread + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    spread + 0x3030_3030_3030_3030 + letters * (b'a' - b'0' - 10) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_as_their_text() {
        let song = song_id(7);
        assert_eq!(song.len(), 18);
        assert!(song.starts_with("s-"));
        assert_eq!(format!("{song}"), song.as_str());
        assert_eq!(format!("{song:?}"), format!("{:?}", song.as_str()));
        assert_ne!(song, song_id(8));
        let listener = Listener {
            user_id: "listener-0-3".to_owned(),
            tier: 0,
            index: 3,
            library_size: 2_000,
            utc_offset_hours: 0,
        };
        let event = event_id(1, &listener, 5);
        assert!(event.chars().all(|digit| digit.is_ascii_hexdigit()));
        assert_ne!(event, event_id(1, &listener, 6));
        assert_ne!(event, event_id(2, &listener, 5));
    }

    #[test]
    fn song_ids_do_not_sort_in_popularity_order() {
        let by_popularity: Vec<SongId> = (0..100).map(song_id).collect();
        let ascending = by_popularity
            .windows(2)
            .filter(|pair| pair[0] < pair[1])
            .count();
        assert!(
            (30..70).contains(&ascending),
            "{ascending} of 99 pairs ascend"
        );
    }

    #[test]
    fn hex_digits_match_the_formatter() {
        for value in [
            0,
            9,
            10,
            15,
            0xabcd,
            u64::MAX,
            0x0123_4567_89ab_cdef,
            mix64(3),
        ] {
            assert_eq!(hex_digits(value), *format!("{value:016x}").as_bytes());
        }
    }
}
