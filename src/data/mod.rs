//! Token data: the shard format, reading and validating shards, the GPT-2 tokenizer, WikiText
//! parsing, the `tokenize` pipeline, batch loaders and the embedded default corpus.
//!
//! # For the training loop
//! ```no_run
//! use lowrank::data::{default_corpus, BatchShape, EvalLoader, Loader, ShardSet, Split};
//! # fn main() -> Result<(), lowrank::data::DataError> {
//! // Shards written by `lowrank tokenize` (or llm.c): a directory's split, or any `*` pattern.
//! let train = ShardSet::open_split("datasets/wikitext103".as_ref(), Split::Train)?;
//! let val = ShardSet::open("datasets/wikitext103/wikitext103_val_*.bin")?;
//! // Or, with no --data, the corpus built into the binary (same types):
//! let corpus = default_corpus();
//!
//! let shape = BatchShape { batch: 8, seq_len: 1024 };
//! let mut loader = Loader::new(&train, shape, 1337)?;
//! let tokens: &[u32] = loader.next_batch(); // B·(T+1), row-major; inputs [..T], targets [1..]
//! let saved = loader.position();            // serde: store it in the checkpoint
//! loader.restore(&saved)?;                  // continues exactly from there
//!
//! let mut eval = EvalLoader::new(&val, shape, Some(20))?; // None: the whole split
//! while let Some(tokens) = eval.next_batch() { /* ... */ }
//! # Ok(()) }
//! ```
//! Windows, epochs and the shuffle are defined exactly in `loader`'s module doc. Every error is a
//! `DataError` naming the file (or pattern) and the problem.

mod corpus;
mod error;
mod loader;
mod pipeline;
mod progress;
mod shard;
mod shardset;
mod sliding;
mod staging;
pub mod tokenizer;
mod wikitext;

pub use corpus::{default_corpus, generate_documents, DefaultCorpus};
pub use error::DataError;
pub use loader::{epoch_order, BatchShape, EvalLoader, Loader, LoaderPosition};
pub use pipeline::{
    is_val_document, pinned_split, tokenize_files, SplitCounts, TokenizeConfig, TokenizeSummary,
};
pub use shard::{
    validate, write_shard, EOT_TOKEN, HEADER_BYTES, SHARD_MAGIC, SHARD_VERSION, VOCAB_SIZE,
};
pub use shardset::{Shard, ShardSet, Split};
pub use sliding::{copy_window, sliding_windows, SlidingWindow};
pub use wikitext::{article_title, split_documents, Document};
