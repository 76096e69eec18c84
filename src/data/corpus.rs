//! The default corpus: short English-like stories generated here by a small probabilistic grammar
//! (about 300 words of our own choosing, no copied text), so `lowrank train` works with no data.
//!
//! It is built to be learnable in minutes by a tiny model on a CPU: a few hundred word types (the
//! unigram alone takes the loss from ln 50257 ≈ 10.8 to about 5), fixed sentence frames, past tense
//! throughout stories, and recurring facts that tie names to professions, towns and animals and
//! numbers to their sums, so that context keeps paying off. Deterministic: the same text on every
//! machine and run.

use super::pipeline::is_val_document;
use super::shardset::ShardSet;
use super::tokenizer::encode_document;
use crate::util::rng::Rng;
use rayon::prelude::*;
use words::*;

/// Stories generated: about 1.3 MB of text, 336k tokens, 504 distinct token ids.
pub const DEFAULT_CORPUS_DOCUMENTS: usize = 2400;
/// One story in twenty goes to val (the `tokenize` rule with F = 0.05).
pub const DEFAULT_CORPUS_VAL_FRACTION: f64 = 0.05;
const SEED: u64 = 20240520;

/// The train and val splits of the default corpus, tokenized, one in-memory shard each.
pub struct DefaultCorpus {
    pub train: ShardSet,
    pub val: ShardSet,
}

/// Generates and tokenizes the default corpus (a fraction of a second on two cores).
pub fn default_corpus() -> DefaultCorpus {
    let documents = generate_documents(SEED, DEFAULT_CORPUS_DOCUMENTS);
    let tokens: Vec<Vec<u16>> = documents.par_iter().map(|d| encode_document(d)).collect();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, doc) in tokens.into_iter().enumerate() {
        let split = if is_val_document(i, DEFAULT_CORPUS_VAL_FRACTION) {
            &mut val
        } else {
            &mut train
        };
        split.extend(doc);
    }
    DefaultCorpus {
        train: ShardSet::from_tokens("default-corpus-train", vec![train]),
        val: ShardSet::from_tokens("default-corpus-val", vec![val]),
    }
}

/// `count` stories from the grammar, deterministic in `seed`.
pub fn generate_documents(seed: u64, count: usize) -> Vec<String> {
    let mut grammar = Grammar {
        rng: Rng::new(seed),
    };
    (0..count).map(|_| grammar.story()).collect()
}

/// A person's fixed facts: everything the corpus says about them agrees.
struct Person {
    name: &'static str,
    profession: &'static str,
    town: &'static str,
    animal: (&'static str, &'static str),
}

fn person(i: usize) -> Person {
    Person {
        name: NAMES[i],
        profession: PROFESSIONS[(i * 7) % PROFESSIONS.len()],
        town: TOWNS[(i * 5) % TOWNS.len()],
        animal: ANIMALS[(i * 4) % ANIMALS.len()],
    }
}

struct Grammar {
    rng: Rng,
}

impl Grammar {
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.rng.below(xs.len() as u64) as usize]
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.uniform() < p
    }

    /// A title, then two or three paragraphs about one main character.
    fn story(&mut self) -> String {
        let hero = person(self.rng.below(NAMES.len() as u64) as usize);
        let mut text = format!("The {} of {}\n\n", hero.profession, hero.town);
        let paragraphs = 2 + self.rng.below(2);
        for p in 0..paragraphs {
            let mut sentences = Vec::new();
            if p == 0 {
                sentences.push(format!(
                    "{} is a {} from {}.",
                    hero.name, hero.profession, hero.town
                ));
            }
            for _ in 0..3 + self.rng.below(4) {
                sentences.push(self.sentence(&hero));
            }
            text += &sentences.join(" ");
            text += "\n\n";
        }
        text
    }

    fn sentence(&mut self, hero: &Person) -> String {
        match self.rng.below(10) {
            0 => self.fact(),
            1 => self.counting(),
            2 => self.sum(),
            3 => format!("{}, it was {}.", self.pick(TIMES), self.pick(WEATHER)),
            4 => format!("\"{},\" said {}.", self.pick(SAYINGS), hero.name),
            5 => {
                let (animal, _) = hero.animal;
                format!(
                    "{} {} the {animal} {} the {}.",
                    hero.name,
                    self.pick(VERBS).1,
                    self.pick(PREPOSITIONS),
                    self.pick(PLACES)
                )
            }
            6 => format!(
                "{} felt {} because {}.",
                hero.name,
                self.pick(FEELINGS),
                self.clause()
            ),
            _ => {
                let (time, clause) = (self.pick(TIMES), self.clause());
                let then = if self.chance(0.3) {
                    format!(", and then {}", self.clause())
                } else {
                    String::new()
                };
                format!("{time}, {clause}{then}.")
            }
        }
    }

    /// One of the recurring facts about anyone.
    fn fact(&mut self) -> String {
        let p = person(self.rng.below(NAMES.len() as u64) as usize);
        match self.rng.below(3) {
            0 => format!("{} works as a {} in {}.", p.name, p.profession, p.town),
            1 => format!("The favourite animal of {} is the {}.", p.name, p.animal.0),
            _ => format!(
                "{} keeps {} {} at home.",
                p.name,
                NUMBER_WORDS[2 + self.rng.below(4) as usize],
                p.animal.1
            ),
        }
    }

    fn counting(&mut self) -> String {
        let n = 2 + self.rng.below(18) as usize;
        let (_, plural) = if self.chance(0.5) {
            self.pick(ANIMALS)
        } else {
            self.pick(THINGS)
        };
        let count = if self.chance(0.5) {
            NUMBER_WORDS[n].to_string()
        } else {
            n.to_string()
        };
        format!(
            "There were {count} {plural} {} the {}.",
            self.pick(PREPOSITIONS),
            self.pick(PLACES)
        )
    }

    /// Arithmetic that is always right, in words: a pattern a model can actually learn.
    fn sum(&mut self) -> String {
        let a = self.rng.below(11) as usize;
        let b = self.rng.below(11) as usize;
        format!(
            "{} and {} make {}.",
            capitalize(NUMBER_WORDS[a]),
            NUMBER_WORDS[b],
            NUMBER_WORDS[a + b]
        )
    }

    /// A subject doing something: "the tired miller who sings carried a lamp near the bridge".
    fn clause(&mut self) -> String {
        let subject = self.subject();
        let (_, verb) = self.pick(VERBS);
        match self.rng.below(3) {
            0 => format!(
                "{subject} {} {}",
                self.pick(INTRANSITIVE).1,
                self.pick(ADVERBS)
            ),
            1 => format!(
                "{subject} {verb} a {} {}",
                self.pick(ADJECTIVES),
                self.pick(THINGS).0
            ),
            _ => format!(
                "{subject} {verb} the {} {} the {}",
                self.pick(THINGS).0,
                self.pick(PREPOSITIONS),
                self.pick(PLACES)
            ),
        }
    }

    fn subject(&mut self) -> String {
        if self.chance(0.35) {
            return self.pick(NAMES).to_string();
        }
        let noun = if self.chance(0.5) {
            self.pick(PROFESSIONS)
        } else {
            self.pick(ANIMALS).0
        };
        let base = format!("the {} {noun}", self.pick(ADJECTIVES));
        if self.chance(0.25) {
            format!(
                "{base} who {} {}",
                self.pick(VERBS).0,
                self.pick(PLACES).to_string() + "s"
            )
        } else {
            base
        }
    }
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map_or(String::new(), |c| c.to_uppercase().chain(chars).collect())
}

/// The vocabulary, as compact tables (kept out of rustfmt's one-item-per-line layout).
#[rustfmt::skip]
mod words {
    pub const NAMES: &[&str] = &[
        "Ada", "Bram", "Cora", "Dov", "Elin", "Faro", "Gus", "Hana", "Ivo", "Juno", "Kai", "Lena", "Milo", "Nia",
        "Otto", "Pia", "Quin", "Rosa", "Sami", "Tova", "Ugo", "Vera", "Wim", "Yuri", "Zora", "Arlo", "Bea", "Cyril",
        "Dara", "Emil",
    ];
    pub const PROFESSIONS: &[&str] = &[
        "baker", "sailor", "teacher", "miller", "painter", "doctor", "farmer", "carpenter", "weaver", "potter",
        "fisher", "singer", "smith", "gardener", "builder", "tailor", "shepherd", "clerk", "cook", "guard",
    ];
    pub const TOWNS: &[&str] = &[
        "Brindle", "Caskin", "Dunmere", "Elmfold", "Farrow", "Glenby", "Harl", "Ivywick", "Kestrel Hill", "Lowmarsh",
        "Northby", "Oakridge",
    ];
    /// (singular, plural)
    pub const ANIMALS: &[(&str, &str)] = &[
        ("fox", "foxes"), ("owl", "owls"), ("goat", "goats"), ("horse", "horses"), ("cat", "cats"), ("dog", "dogs"),
        ("heron", "herons"), ("rabbit", "rabbits"), ("crow", "crows"), ("sheep", "sheep"), ("duck", "ducks"),
        ("badger", "badgers"), ("mouse", "mice"), ("bee", "bees"), ("deer", "deer"),
    ];
    pub const THINGS: &[(&str, &str)] = &[
        ("lamp", "lamps"), ("basket", "baskets"), ("letter", "letters"), ("boat", "boats"), ("key", "keys"),
        ("loaf", "loaves"), ("map", "maps"), ("rope", "ropes"), ("cup", "cups"), ("book", "books"), ("hat", "hats"),
        ("stone", "stones"), ("bell", "bells"), ("coat", "coats"), ("box", "boxes"), ("apple", "apples"),
        ("candle", "candles"), ("drum", "drums"), ("kettle", "kettles"), ("ladder", "ladders"),
    ];
    pub const PLACES: &[&str] = &[
        "river", "market", "bridge", "mill", "garden", "harbour", "forest", "square", "hill", "school", "barn",
        "church", "well", "orchard", "road", "meadow", "station", "library", "kitchen", "gate",
    ];
    pub const ADJECTIVES: &[&str] = &[
        "old", "young", "small", "tall", "quiet", "bright", "tired", "clever", "kind", "brave", "red", "green", "heavy",
        "little", "wooden", "warm", "cold", "busy", "careful", "gentle", "strange", "happy", "sleepy", "loud",
    ];
    pub const PREPOSITIONS: &[&str] = &[
        "near", "under", "behind", "beside", "across", "inside", "above", "beyond", "by",
    ];
    /// (present, past) of verbs that take an object.
    pub const VERBS: &[(&str, &str)] = &[
        ("sees", "saw"), ("finds", "found"), ("carries", "carried"), ("paints", "painted"), ("mends", "mended"),
        ("sells", "sold"), ("buys", "bought"), ("hides", "hid"), ("washes", "washed"), ("counts", "counted"),
        ("drops", "dropped"), ("lifts", "lifted"), ("brings", "brought"), ("follows", "followed"),
        ("watches", "watched"), ("feeds", "fed"), ("draws", "drew"), ("opens", "opened"),
    ];
    /// (present, past) of verbs without an object.
    pub const INTRANSITIVE: &[(&str, &str)] = &[
        ("sleeps", "slept"), ("sings", "sang"), ("waits", "waited"), ("runs", "ran"), ("laughs", "laughed"),
        ("walks", "walked"), ("works", "worked"), ("rests", "rested"), ("dances", "danced"), ("listens", "listened"),
    ];
    pub const ADVERBS: &[&str] = &[
        "slowly", "quietly", "quickly", "happily", "carefully", "loudly", "again", "early", "late",
    ];
    pub const TIMES: &[&str] = &[
        "In the morning", "At noon", "In the evening", "At night", "On Monday", "On Friday", "Every spring",
        "Last winter", "Before dawn", "After the rain", "Later that day", "One summer",
    ];
    pub const WEATHER: &[&str] = &[
        "raining", "windy", "cold", "sunny", "foggy", "warm", "snowing", "cloudy",
    ];
    pub const NUMBER_WORDS: &[&str] = &[
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
    ];
    pub const FEELINGS: &[&str] = &[
        "glad", "surprised", "worried", "proud", "curious", "calm", "sad", "pleased",
    ];
    pub const SAYINGS: &[&str] = &[
        "What a day", "Look at that", "We are late", "It is time to go", "Come with me", "Thank you", "I have an idea",
        "Not again", "Listen", "Wait for me",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_seed_dependent() {
        assert_eq!(generate_documents(1, 5), generate_documents(1, 5));
        assert_ne!(generate_documents(1, 5), generate_documents(2, 5));
    }

    #[test]
    fn every_fact_about_a_person_agrees() {
        // Ada is person 0: baker (0·7 mod 20), Brindle (0·5 mod 12), fox (0·4 mod 15).
        let text = generate_documents(SEED, 300).concat();
        assert!(text.contains("Ada works as a baker in Brindle."));
        for line in text.lines().flat_map(|l| l.split(". ")) {
            if let Some(rest) = line.strip_prefix("Ada works as a ") {
                assert_eq!(rest.trim_end_matches('.'), "baker in Brindle");
            }
        }
        // Bram is person 1: 7 → carpenter, 5 → Glenby, 4 → cat.
        assert!(text.contains("The favourite animal of Bram is the cat."));
        assert!(!text.contains("The favourite animal of Bram is the fox."));
    }

    #[test]
    fn sums_are_right() {
        let text = generate_documents(SEED, 200).concat();
        let mut checked = 0;
        for sentence in text.split(['.', '\n']) {
            let words: Vec<&str> = sentence.split_whitespace().collect();
            if let [a, "and", b, "make", c] = words[..] {
                let value = |w: &str| {
                    NUMBER_WORDS
                        .iter()
                        .position(|n| n.eq_ignore_ascii_case(w))
                        .unwrap()
                };
                assert_eq!(value(a) + value(b), value(c), "{sentence}");
                checked += 1;
            }
        }
        assert!(checked > 50, "only {checked} sums");
    }

    #[test]
    fn default_corpus_is_sized_and_split() {
        let corpus = default_corpus();
        let (train, val) = (corpus.train.total_tokens(), corpus.val.total_tokens());
        assert!(
            (100_000..1_000_000).contains(&train),
            "{train} train tokens"
        );
        assert!(
            val * 10 < train && val * 40 > train,
            "{val} val tokens vs {train}"
        );
        let distinct: std::collections::HashSet<u16> =
            corpus.train.shards()[0].tokens().iter().copied().collect();
        assert!(
            (200..1500).contains(&distinct.len()),
            "{} distinct tokens",
            distinct.len()
        );
        assert_eq!(corpus.train.shards()[0].tokens()[0], 50256);
    }
}
