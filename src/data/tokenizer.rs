//! GPT-2's byte-pair encoding (tiktoken's `r50k_base`, whose vocabulary ships inside tiktoken-rs, so
//! no network is needed), with the document convention of llm.c and nanoGPT: `<|endoftext|>` first.

use super::shard::EOT_TOKEN;
use tiktoken_rs::CoreBPE;

thread_local! {
    /// The GPT-2 tokenizer, one per thread that tokenizes (about 0.1–0.3 s to build its tables).
    /// Not one per process: the tokenizer's regex keeps state (lazy DFA caches, a backtracking VM's
    /// program) behind shared pointers that its clones share too, and threads sharing one spend
    /// more time on that than on tokenizing (`tokenize` on 2 threads used twice the CPU of 1).
    static GPT2: CoreBPE = tiktoken_rs::r50k_base().expect("tiktoken-rs's r50k_base ships with the crate");
}

/// Runs `f` with this thread's GPT-2 tokenizer.
fn with_gpt2<R>(f: impl FnOnce(&CoreBPE) -> R) -> R {
    GPT2.with(f)
}

/// Token ids of `text` as ordinary text: a literal "<|endoftext|>" inside it is not the special token.
pub fn encode(text: &str) -> Vec<u16> {
    // Every r50k_base id is < 50257 and so fits u16, which is what the shard format stores.
    with_gpt2(|bpe| bpe.encode_ordinary(text))
        .into_iter()
        .map(|t| t as u16)
        .collect()
}

/// One document's tokens: `<|endoftext|>` (50256), then the text's tokens.
pub fn encode_document(text: &str) -> Vec<u16> {
    let mut tokens = Vec::with_capacity(text.len() / 3 + 1);
    tokens.push(EOT_TOKEN);
    tokens.extend(encode(text));
    tokens
}

/// The text of token ids (lossy where a multi-byte character is split across ids).
pub fn decode(tokens: &[u32]) -> String {
    match with_gpt2(|bpe| bpe.decode_bytes(tokens)) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<undecodable token {}>", e.token),
    }
}

/// The bytes of token ids (a multi-byte character may be split across ids), or None if one is
/// not a GPT-2 token.
pub fn decode_bytes(tokens: &[u32]) -> Option<Vec<u8>> {
    with_gpt2(|bpe| bpe.decode_bytes(tokens)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference ids from OpenAI's GPT-2 encoder (tiktoken.get_encoding("gpt2"), also HF GPT2Tokenizer).
    #[test]
    fn known_strings_have_gpt2_ids() {
        assert_eq!(encode("Hello world"), vec![15496, 995]);
        assert_eq!(encode(" the"), vec![262]);
        assert_eq!(encode("\n"), vec![198]);
        assert_eq!(encode(" ="), vec![796]);
    }

    #[test]
    fn documents_start_with_endoftext() {
        assert_eq!(encode_document("Hello world"), vec![50256, 15496, 995]);
        assert_eq!(encode_document(""), vec![50256]);
    }

    #[test]
    fn literal_endoftext_in_text_is_not_the_separator() {
        let ids = encode("<|endoftext|>");
        assert!(!ids.contains(&50256), "{ids:?}");
        assert!(ids.len() > 1);
    }

    #[test]
    fn decode_inverts_encode() {
        let text = "Valkyria Chronicles III = 1 @,@ 000 tokens: naïve café";
        let ids: Vec<u32> = encode(text).into_iter().map(u32::from).collect();
        assert_eq!(decode(&ids), text);
    }
}
