//! llm.c's token shard format, so shards from llm.c and modded-nanogpt load here and ours load there:
//! a 1024-byte header of 256 little-endian int32 (magic 20240520, version 1, token count, zeros),
//! then `count` little-endian uint16 GPT-2 token ids.

use super::error::DataError;
use std::io::Write;
use std::path::Path;

pub const SHARD_MAGIC: i32 = 20240520;
pub const SHARD_VERSION: i32 = 1;
pub const HEADER_BYTES: usize = 1024;
/// The GPT-2 vocabulary: ids 0..50257, of which 50256 is `<|endoftext|>`.
pub const VOCAB_SIZE: usize = 50257;
/// `<|endoftext|>`: every document starts with it, as in llm.c's and nanoGPT's data scripts.
pub const EOT_TOKEN: u16 = 50256;

// Tokens are reinterpreted in place from the mapped bytes, which is only the file's little-endian
// layout on a little-endian host.
#[cfg(target_endian = "big")]
compile_error!(
    "the shard reader maps little-endian uint16 tokens in place and needs a little-endian host"
);

/// The 1024-byte header for a shard of `count` tokens.
pub fn encode_header(count: usize) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&SHARD_MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&SHARD_VERSION.to_le_bytes());
    header[8..12].copy_from_slice(&(count as i32).to_le_bytes());
    header
}

/// Checks a whole shard file's bytes (header, size, every token) and returns its token payload.
pub fn validate<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u16], DataError> {
    let path_buf = || path.to_path_buf();
    let len = bytes.len() as u64;
    if bytes.is_empty() {
        return Err(DataError::EmptyShard { path: path_buf() });
    }
    if bytes.len() < HEADER_BYTES {
        return Err(DataError::HeaderTruncated {
            path: path_buf(),
            len,
        });
    }
    let word = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    if word(0) != SHARD_MAGIC {
        return Err(DataError::BadMagic {
            path: path_buf(),
            found: word(0),
        });
    }
    if word(1) != SHARD_VERSION {
        return Err(DataError::BadVersion {
            path: path_buf(),
            found: word(1),
        });
    }
    let count = word(2);
    if count < 0 {
        return Err(DataError::NegativeTokenCount {
            path: path_buf(),
            count,
        });
    }
    let payload = &bytes[HEADER_BYTES..];
    if !payload.len().is_multiple_of(2) {
        return Err(DataError::OddPayload {
            path: path_buf(),
            bytes: payload.len() as u64,
        });
    }
    let expected = (HEADER_BYTES + 2 * count as usize) as u64;
    if len != expected {
        return Err(DataError::SizeMismatch {
            path: path_buf(),
            count: count as u64,
            expected,
            actual: len,
        });
    }
    let tokens = tokens_of(payload);
    if let Some(index) = tokens.iter().position(|&t| t as usize >= VOCAB_SIZE) {
        return Err(DataError::TokenOutOfVocab {
            path: path_buf(),
            index,
            token: tokens[index],
            vocab: VOCAB_SIZE,
        });
    }
    Ok(tokens)
}

/// The payload as tokens: borrowed in place when 2-byte aligned (always, for a page-aligned map
/// plus the 1024-byte header), which is the point of memory-mapping.
fn tokens_of(payload: &[u8]) -> &[u16] {
    bytemuck::try_cast_slice(payload).expect("shard payload is 2-byte aligned and even-sized")
}

/// Writes one shard atomically: to `path.tmp`, then renamed, so a reader never sees half a shard;
/// a write that fails (a full disk) removes its temporary file.
pub fn write_shard(path: &Path, tokens: &[u16]) -> Result<(), DataError> {
    assert!(
        tokens.len() <= i32::MAX as usize,
        "a shard holds at most 2^31-1 tokens"
    );
    let tmp = path.with_extension("bin.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        file.write_all(&encode_header(tokens.len()))?;
        for chunk in tokens.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|t| t.to_le_bytes()).collect();
            file.write_all(&bytes)?;
        }
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        DataError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A shard's bytes written by hand from the format's definition, not by `write_shard`.
    fn shard_bytes(magic: i32, version: i32, count: i32, tokens: &[u16]) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_BYTES];
        bytes[0..4].copy_from_slice(&magic.to_le_bytes());
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        bytes[8..12].copy_from_slice(&count.to_le_bytes());
        for t in tokens {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        bytes
    }

    /// Copies into a u16-aligned buffer, as a memory map would be, so `validate` can borrow in place.
    fn check(bytes: &[u8]) -> Result<Vec<u16>, DataError> {
        let mut aligned = vec![0u16; bytes.len().div_ceil(2)];
        bytemuck::cast_slice_mut::<u16, u8>(&mut aligned)[..bytes.len()].copy_from_slice(bytes);
        let view = &bytemuck::cast_slice::<u16, u8>(&aligned)[..bytes.len()];
        validate(&PathBuf::from("x.bin"), view).map(|t| t.to_vec())
    }

    #[test]
    fn header_layout_matches_llm_c() {
        let h = encode_header(3);
        // 20240520 = 0x0134D888 (1·2²⁴ + 0x34·2¹⁶ + 0xD8·2⁸ + 0x88), stored little-endian.
        assert_eq!(&h[0..12], &[0x88, 0xD8, 0x34, 0x01, 1, 0, 0, 0, 3, 0, 0, 0]);
        assert!(h[12..].iter().all(|&b| b == 0));
    }

    #[test]
    fn valid_shard_yields_its_tokens() {
        assert_eq!(
            check(&shard_bytes(20240520, 1, 3, &[0, 50256, 995])).unwrap(),
            vec![0, 50256, 995]
        );
        assert_eq!(
            check(&shard_bytes(20240520, 1, 0, &[])).unwrap(),
            Vec::<u16>::new()
        );
    }

    #[test]
    fn each_corruption_has_its_own_error() {
        let good = shard_bytes(20240520, 1, 3, &[1, 2, 3]);
        assert!(matches!(check(&[]), Err(DataError::EmptyShard { .. })));
        assert!(matches!(
            check(&good[..1000]),
            Err(DataError::HeaderTruncated { len: 1000, .. })
        ));
        assert!(matches!(
            check(&shard_bytes(20240521, 1, 3, &[1, 2, 3])),
            Err(DataError::BadMagic {
                found: 20240521,
                ..
            })
        ));
        assert!(matches!(
            check(&shard_bytes(20240520, 2, 3, &[1, 2, 3])),
            Err(DataError::BadVersion { found: 2, .. })
        ));
        assert!(matches!(
            check(&shard_bytes(20240520, 1, -1, &[])),
            Err(DataError::NegativeTokenCount { count: -1, .. })
        ));
        assert!(matches!(
            check(&good[..good.len() - 1]),
            Err(DataError::OddPayload { bytes: 5, .. })
        ));
        let truncated = check(&good[..good.len() - 2]).unwrap_err();
        assert!(matches!(
            truncated,
            DataError::SizeMismatch {
                count: 3,
                expected: 1030,
                actual: 1028,
                ..
            }
        ));
        assert!(truncated.to_string().contains("truncated"), "{truncated}");
        let trailing = check(&shard_bytes(20240520, 1, 2, &[1, 2, 3])).unwrap_err();
        assert!(
            trailing.to_string().contains("trailing bytes"),
            "{trailing}"
        );
        let bad_token = check(&shard_bytes(20240520, 1, 3, &[1, 50257, 3])).unwrap_err();
        assert!(matches!(
            bad_token,
            DataError::TokenOutOfVocab {
                index: 1,
                token: 50257,
                ..
            }
        ));
        assert!(
            bad_token.to_string().contains("x.bin"),
            "the message names the file: {bad_token}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Arbitrary bytes, and arbitrary tails after a valid header: an error or tokens, never a panic.
        #[test]
        fn validate_survives_arbitrary_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1200),
            count in 0i32..100,
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let _ = check(&bytes);
            let mut with_header = shard_bytes(20240520, 1, count, &[]);
            with_header.extend_from_slice(&tail);
            if let Ok(tokens) = check(&with_header) {
                proptest::prop_assert_eq!(tokens.len(), count as usize);
                proptest::prop_assert!(tokens.iter().all(|&t| (t as usize) < VOCAB_SIZE));
            }
        }
    }
}
