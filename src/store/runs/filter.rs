//! A filter over the keys of one location run: whether an order_id may be
//! in the run, or surely is not. A run never changes once written, so its
//! filter is built once, when the run is written or merged, and stored
//! beside it; a writer then reads only the chunks that may hold the
//! order_ids it looks for, however far apart they fall.
//!
//! A blocked Bloom filter of [`BITS_PER_KEY`] bits a key: a key's
//! [`PROBES`] bits all fall in one block of 512 bits, a cache line, so that
//! putting a key in or looking one up touches memory once rather than
//! once a probe: about one false positive in a thousand, so that a writer
//! whose order_ids fall among a large tenant's stored ones reads few
//! chunks for nothing (ten bits a key let one in a hundred through, and
//! those reads took a third of the server's time in such an import on
//! PostgreSQL).
//!
//! The stored layout and the hash are this module's own, fixed by
//! [`VERSION`]: a stored filter must read the same for as long as its run
//! lives, whatever a library does next. Its size is not part of the
//! layout: the blocks are as many as its bytes hold, so filters written
//! with fewer bits a key read as they were. Bytes it cannot read are a
//! filter that lets every key through.

/// The layout written: a version byte, then the bits, little-endian words.
const VERSION: u8 = 1;

/// Bits kept per key (two bytes).
const BITS_PER_KEY: u64 = 16;

/// Bits probed per key.
const PROBES: u64 = 7;

/// Bits in a block, and words.
const BLOCK_BITS: u64 = 512;
const BLOCK_WORDS: u64 = BLOCK_BITS / 64;

/// The largest filter kept, in bytes (a run of about 33 million keys);
/// a larger run is stored without one, and read through as before.
const MAX_BYTES: u64 = 64 << 20;

/// A built or stored filter.
pub(crate) struct KeyFilter {
    words: Vec<u64>,
}

impl KeyFilter {
    /// An empty filter sized for `keys` keys, or None when there are too
    /// many to keep one.
    pub fn with_capacity(keys: u64) -> Option<Self> {
        let bits = keys.saturating_mul(BITS_PER_KEY).max(BLOCK_BITS);
        if bits / 8 > MAX_BYTES {
            return None;
        }
        Some(KeyFilter {
            words: vec![0; (bits.div_ceil(BLOCK_BITS) * BLOCK_WORDS) as usize],
        })
    }

    /// A filter for keys whose hashes (see [`hash`]) are `hashes`, or None
    /// when there are too many to keep one.
    pub fn build(hashes: impl ExactSizeIterator<Item = u64>) -> Option<Self> {
        let mut filter = Self::with_capacity(hashes.len() as u64)?;
        for h in hashes {
            filter.insert(h);
        }
        Some(filter)
    }

    /// Puts a key of hash `h` in.
    pub fn insert(&mut self, h: u64) {
        for bit in probes(self.blocks(), h) {
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    /// Whether a key of hash `h` may be in the run: false only when it
    /// surely is not.
    pub fn may_contain(&self, h: u64) -> bool {
        probes(self.blocks(), h).all(|bit| self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    fn blocks(&self) -> u64 {
        self.words.len() as u64 / BLOCK_WORDS
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.words.len() * 8);
        out.push(VERSION);
        for word in &self.words {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// A stored filter, or None when the bytes are not one this version
    /// reads (the run is then read as if it had none).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, words) = bytes.split_first()?;
        let block_bytes = (BLOCK_WORDS * 8) as usize;
        if version != VERSION || words.is_empty() || words.len() % block_bytes != 0 {
            return None;
        }
        Some(KeyFilter {
            words: words
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("eight bytes")))
                .collect(),
        })
    }
}

/// The bits of a filter of `blocks` blocks that a key of hash `h` sets:
/// its block chosen by `h`, and within it by double hashing of a second
/// hash mixed out of the first.
fn probes(blocks: u64, h: u64) -> impl Iterator<Item = u64> {
    let base = (h % blocks) * BLOCK_BITS;
    let second = mix(h);
    let step = (second >> 32) | 1;
    (0..PROBES).map(move |i| base + (second.wrapping_add(i.wrapping_mul(step)) % BLOCK_BITS))
}

/// The hash of a key, as filters take it: its bytes taken eight at a
/// time (little-endian, the last word padded with zeros), each folded in
/// by FNV-1a's step on words, then the length, then mixed so that keys
/// that differ in any byte spread over every bit.
pub(crate) fn hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for word in key.chunks(8) {
        let mut bytes = [0u8; 8];
        bytes[..word.len()].copy_from_slice(word);
        h = (h ^ u64::from_le_bytes(bytes)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h ^ key.len() as u64)
}

/// SplitMix64's finalizer: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_put_in_is_found_and_few_others_are() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("ord-1-{i:010}")).collect();
        let hashes: Vec<u64> = keys.iter().map(|k| hash(k.as_bytes())).collect();
        let filter =
            KeyFilter::decode(&KeyFilter::build(hashes.iter().copied()).unwrap().encode()).unwrap();
        assert!(hashes.iter().all(|&h| filter.may_contain(h)));
        let false_positives = (0..20_000)
            .filter(|i| filter.may_contain(hash(format!("ord-1-{i:010}r").as_bytes())))
            .count();
        // About twenty are expected; ten bits a key let through about 200.
        assert!(false_positives < 80, "{false_positives} of 20,000");
    }

    #[test]
    fn a_filter_of_another_size_reads_as_it_was_written() {
        // Sized for ten bits a key, as filters were first written.
        let hashes: Vec<u64> = (0..5_000)
            .map(|i| hash(format!("ord-2-{i:010}").as_bytes()))
            .collect();
        let blocks = (5_000 * 10_u64).div_ceil(BLOCK_BITS);
        let mut small = KeyFilter {
            words: vec![0; (blocks * BLOCK_WORDS) as usize],
        };
        for &h in &hashes {
            small.insert(h);
        }
        let read = KeyFilter::decode(&small.encode()).unwrap();
        assert_eq!(read.blocks(), blocks);
        assert!(hashes.iter().all(|&h| read.may_contain(h)));
    }

    #[test]
    fn bytes_of_another_version_or_torn_read_as_no_filter() {
        let filter = KeyFilter::build([hash(b"a")].into_iter()).unwrap().encode();
        assert!(KeyFilter::decode(&filter).is_some());
        assert!(KeyFilter::decode(&[]).is_none());
        assert!(KeyFilter::decode(&filter[..filter.len() - 1]).is_none());
        let mut other = filter.clone();
        other[0] = VERSION + 1;
        assert!(KeyFilter::decode(&other).is_none());
    }

    #[test]
    fn the_hash_is_fixed() {
        // Stored filters depend on it: it must never change. (The values
        // were worked out apart from this code, from FNV-1a's and
        // SplitMix64's published constants.) Keys that differ only in
        // the padding a short last word gets must differ too.
        assert_eq!(hash(b"ord-1-0000000000"), 0x7a78_879a_7b2a_05a1);
        assert_eq!(hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_ne!(hash(b"ab"), hash(b"ab\0"));
    }
}
