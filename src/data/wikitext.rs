//! Splitting text into documents at WikiText's article headers.
//!
//! WikiText-103 (`wiki.{train,valid,test}.{raw,tokens}`) puts each article's title on its own line as
//! ` = Title = `: exactly one `=` on each side. Sections are ` = = Section = = ` and deeper, and stay
//! inside their article. A document runs from its header line to the line before the next header,
//! verbatim, so the documents concatenated give back the file (less any whitespace-only text before
//! the first header). Text with no header at all is one document.

use super::error::DataError;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document<'a> {
    /// The article title, or None for text before the first header or a file without headers.
    pub title: Option<&'a str>,
    /// The document's text, header line included.
    pub text: &'a str,
}

/// `bytes` as UTF-8, or an error naming `path` and the offset of the first invalid byte.
pub fn as_utf8<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, DataError> {
    std::str::from_utf8(bytes).map_err(|e| DataError::InvalidUtf8 {
        path: path.to_path_buf(),
        offset: e.valid_up_to(),
    })
}

/// The article title if `line` is a WikiText article header (` = Title = `), else None.
pub fn article_title(line: &str) -> Option<&str> {
    let inner = line.trim().strip_prefix("= ")?.strip_suffix(" =")?;
    let title = inner.trim();
    // A section header ` = = S = = ` leaves `= S =` here; a title never starts or ends with `=`.
    let is_article = !title.is_empty() && !title.starts_with('=') && !title.ends_with('=');
    is_article.then_some(title)
}

/// The documents of `text`; whitespace-only documents are dropped.
pub fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut title = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if let Some(next_title) = article_title(line) {
            push_document(&mut documents, title, &text[start..offset]);
            start = offset;
            title = Some(next_title);
        }
        offset += line.len();
    }
    push_document(&mut documents, title, &text[start..]);
    documents
}

fn push_document<'a>(documents: &mut Vec<Document<'a>>, title: Option<&'a str>, text: &'a str) {
    if !text.trim().is_empty() {
        documents.push(Document { title, text });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape of wiki.train.raw: a blank line, the header, blank, paragraphs, section headers.
    const SAMPLE: &str = " \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 is a game . \n \n \
        = = Gameplay = = \n \n As with previous games , the player ... \n \n = = = Plot = = = \n \n x \n \
        \n = Tower Building of the Little Rock Arsenal = \n \n The building was built in 1840 . \n \n \
        = = Construction = = \n \n y = 2 \n \n = Sumner = \n";

    #[test]
    fn wikitext_sample_splits_into_its_three_articles() {
        let docs = split_documents(SAMPLE);
        let titles: Vec<_> = docs.iter().map(|d| d.title).collect();
        assert_eq!(
            titles,
            vec![
                Some("Valkyria Chronicles III"),
                Some("Tower Building of the Little Rock Arsenal"),
                Some("Sumner")
            ]
        );
        assert!(docs[0].text.starts_with(" = Valkyria Chronicles III = \n"));
        assert!(
            docs[0].text.contains("= = = Plot = = ="),
            "sections stay inside their article"
        );
        assert!(docs[1].text.ends_with(" y = 2 \n \n"));
        assert_eq!(docs[2].text, " = Sumner = \n");
        // Only the leading " \n" (whitespace before the first header) is dropped.
        assert_eq!(
            docs.iter().map(|d| d.text).collect::<String>(),
            &SAMPLE[2..]
        );
    }

    #[test]
    fn headers_need_exactly_one_equals_each_side() {
        assert_eq!(article_title(" = Title = \n"), Some("Title"));
        assert_eq!(article_title("= A = B =\r\n"), Some("A = B"));
        assert_eq!(article_title(" = = Section = = "), None);
        assert_eq!(article_title(" = = = Sub = = = "), None);
        assert_eq!(article_title(" =  = "), None);
        assert_eq!(article_title("x = y = z"), None);
        assert_eq!(article_title("=Title="), None);
    }

    #[test]
    fn text_without_headers_is_one_untitled_document() {
        let docs = split_documents("Just some text.\nAnother line = with equals =\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].title, None);
        assert!(split_documents(" \n\t\n").is_empty());
        let with_preamble = split_documents("preface\n = T = \nbody\n");
        assert_eq!(
            with_preamble.iter().map(|d| d.title).collect::<Vec<_>>(),
            vec![None, Some("T")]
        );
    }

    #[test]
    fn invalid_utf8_names_file_and_offset() {
        let err = as_utf8(Path::new("wiki.train.raw"), b"abc\xffdef").unwrap_err();
        assert!(matches!(err, DataError::InvalidUtf8 { offset: 3, .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("wiki.train.raw") && msg.contains("byte offset 3"),
            "{msg}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// Any bytes: an error or documents, never a panic; documents tile the text in order.
        #[test]
        fn parser_survives_arbitrary_bytes(bytes in proptest::collection::vec(
            proptest::sample::select(vec![b' ', b'=', b'\n', b'\r', b'a', b'Z', 0xC3, 0xA9, 0xFF]), 0..300)) {
            if let Ok(text) = as_utf8(Path::new("p"), &bytes) {
                let docs = split_documents(text);
                let joined: String = docs.iter().map(|d| d.text).collect();
                proptest::prop_assert!(text.ends_with(&joined));
                proptest::prop_assert!(text[..text.len() - joined.len()].trim().is_empty() || docs.is_empty());
            }
        }

        #[test]
        fn parser_survives_arbitrary_strings(text in "\\PC{0,200}") {
            let docs = split_documents(&text);
            proptest::prop_assert!(docs.iter().all(|d| !d.text.trim().is_empty()));
        }
    }
}
