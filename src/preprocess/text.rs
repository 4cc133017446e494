//! Text: ImageBind's `SimpleTokenizer` (OpenAI CLIP BPE) with its text cleaning, id for id.
//!
//! Reference: `imagebind/models/multimodal_preprocessors.py` (`SimpleTokenizer`, `basic_clean`,
//! `whitespace_clean`) and `imagebind/data.py::load_and_transform_text`.
//!
//! Pipeline per text:
//! 1. `ftfy.fix_text` (defaults), ported step by step: HTML entities (ftfy's table, only while no segment so far
//!    contained `<`), C1 controls → windows-1252, Latin ligatures, full/half width, curly quotes, line breaks,
//!    terminal escapes, control characters, NFC — repeated per line until nothing changes, as ftfy does.
//!    **Not ported:** ftfy's mojibake repair (`fix_encoding`: re-decoding text that looks like UTF-8 read as
//!    Latin-1/Windows-1252/MacRoman, `restore_byte_a0`, `replace_lossy_sequences`, `decode_inconsistent_utf8`).
//!    It is a statistical heuristic (ftfy's "badness" score); prompts typed by people do not contain mojibake, and
//!    text that does may tokenize differently from the reference.
//! 2. `html.unescape` twice (Python's algorithm, HTML5 entity table, invalid character references).
//! 3. Python `strip()`, `regex.sub(r"\s+", " ")`, `strip()`, `lower()`.
//! 4. The token pattern, bytes → unicode, BPE merges, SOT 49406 + ids[:76] + EOT 49407, zero-padded to 77.
//!
//! The character tables come from the reference's own modules (`tools/gen_text_tables.py`).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use super::text_tables as tables;

/// Token id of `<|startoftext|>`.
pub const SOT: i64 = 49406;
/// Token id of `<|endoftext|>`.
pub const EOT: i64 = 49407;
/// Tokens per text, including SOT and EOT.
pub const CONTEXT_LENGTH: usize = 77;
/// Merges used from the vocabulary file (`49152 - 256 - 2`), as CLIP does.
const MERGES: usize = 49152 - 256 - 2;

/// Why the tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The vocabulary file could not be read or decompressed.
    #[error("cannot read the BPE vocabulary {path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// The OS or gzip error.
        cause: std::io::Error,
    },
    /// The vocabulary is not CLIP's format.
    #[error("the BPE vocabulary {path} is malformed: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// CLIP's byte-level BPE tokenizer, as ImageBind uses it.
#[derive(Debug)]
pub struct Tokenizer {
    /// Byte → the printable character CLIP maps it to.
    byte_encoder: [char; 256],
    /// Byte → id of that character as a token (index into the vocabulary).
    byte_id: [u32; 256],
    /// Byte → id of that character followed by `</w>`.
    byte_end_id: [u32; 256],
    /// (left id, right id) → (merge rank, id of the merged token).
    merges: HashMap<(u32, u32), (u32, u32)>,
    pattern: Regex,
}

impl Tokenizer {
    /// Loads `bpe_simple_vocab_16e6.txt.gz`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let name = path.display().to_string();
        let io = |cause| TokenizerError::Io {
            path: name.clone(),
            cause,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .map_err(io)?;
        Self::from_merges_text(&text).map_err(|reason| TokenizerError::Format { path: name, reason })
    }

    /// Builds the tokenizer from the decompressed vocabulary text.
    pub fn from_merges_text(text: &str) -> Result<Self, String> {
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() < MERGES + 1 {
            return Err(format!(
                "{} lines; CLIP's vocabulary has at least {}",
                lines.len(),
                MERGES + 1
            ));
        }
        let merges: Vec<(&str, &str)> = lines[1..=MERGES]
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut parts = l.split_whitespace();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => Ok((a, b)),
                    _ => Err(format!("line {} is not a pair of symbols: {l:?}", i + 2)),
                }
            })
            .collect::<Result<_, _>>()?;

        let byte_encoder = bytes_to_unicode();
        // The vocabulary in CLIP's order; `encoder` maps a token string to its id, the last occurrence winning
        // (Python's `dict(zip(vocab, range(len(vocab))))`).
        let mut vocab: Vec<String> = Vec::with_capacity(49408);
        let ordered = byte_order();
        vocab.extend(ordered.iter().map(|&b| byte_encoder[usize::from(b)].to_string()));
        vocab.extend(ordered.iter().map(|&b| format!("{}</w>", byte_encoder[usize::from(b)])));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push("<|startoftext|>".into());
        vocab.push("<|endoftext|>".into());
        let mut encoder: HashMap<&str, u32> = HashMap::with_capacity(vocab.len());
        for (i, tok) in vocab.iter().enumerate() {
            encoder.insert(tok.as_str(), i as u32);
        }
        if encoder.get("<|startoftext|>") != Some(&(SOT as u32)) || encoder.get("<|endoftext|>") != Some(&(EOT as u32))
        {
            return Err("the special tokens are not at ids 49406/49407".into());
        }
        let id = |s: &str| {
            encoder
                .get(s)
                .copied()
                .ok_or_else(|| format!("symbol {s:?} is not in the vocabulary"))
        };
        let mut byte_id = [0u32; 256];
        let mut byte_end_id = [0u32; 256];
        for b in 0..256 {
            byte_id[b] = id(&byte_encoder[b].to_string())?;
            byte_end_id[b] = id(&format!("{}</w>", byte_encoder[b]))?;
        }
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let merged = id(&format!("{a}{b}"))?;
            merge_map.insert((id(a)?, id(b)?), (rank as u32, merged));
        }
        let pattern = Regex::new(
            r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            byte_encoder,
            byte_id,
            byte_end_id,
            merges: merge_map,
            pattern,
        })
    }

    /// ImageBind's `tokenizer(text)`: 77 ids, SOT first, EOT after at most 75 text tokens, zero padding.
    pub fn tokenize(&self, text: &str) -> [i64; CONTEXT_LENGTH] {
        let mut ids = Vec::with_capacity(CONTEXT_LENGTH);
        ids.push(SOT);
        self.encode_into(text, &mut ids, CONTEXT_LENGTH - 1);
        ids.truncate(CONTEXT_LENGTH - 1);
        ids.push(EOT);
        let mut out = [0i64; CONTEXT_LENGTH];
        out[..ids.len()].copy_from_slice(&ids);
        out
    }

    /// The BPE ids of a text after cleaning (no SOT/EOT, no truncation).
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids = Vec::new();
        self.encode_into(text, &mut ids, usize::MAX);
        ids
    }

    /// Appends ids until `out` holds `limit` of them (the rest would be truncated anyway).
    fn encode_into(&self, text: &str, out: &mut Vec<i64>, limit: usize) {
        let cleaned = clean(text);
        let mut symbols: Vec<u32> = Vec::new();
        for m in self.pattern.find_iter(&cleaned) {
            if out.len() >= limit {
                return;
            }
            let token = m.as_str();
            match token {
                // CLIP's cache maps the special tokens to themselves (no `</w>`).
                "<|startoftext|>" => out.push(SOT),
                "<|endoftext|>" => out.push(EOT),
                _ => {
                    self.bpe(token.as_bytes(), &mut symbols);
                    out.extend(symbols.iter().map(|&s| i64::from(s)));
                }
            }
        }
    }

    /// Byte-level BPE of one pre-token into vocabulary ids.
    fn bpe(&self, bytes: &[u8], word: &mut Vec<u32>) {
        word.clear();
        let Some((&last, rest)) = bytes.split_last() else {
            return;
        };
        word.extend(rest.iter().map(|&b| self.byte_id[usize::from(b)]));
        word.push(self.byte_end_id[usize::from(last)]);
        while word.len() > 1 {
            // The pair with the lowest rank anywhere in the word.
            let best = word
                .windows(2)
                .filter_map(|p| {
                    self.merges
                        .get(&(p[0], p[1]))
                        .map(|&(rank, merged)| (rank, p[0], p[1], merged))
                })
                .min_by_key(|&(rank, ..)| rank);
            let Some((_, first, second, merged)) = best else {
                break;
            };
            // Merge every non-overlapping occurrence, left to right.
            let mut i = 0;
            let mut j = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    word[j] = merged;
                    i += 2;
                } else {
                    word[j] = word[i];
                    i += 1;
                }
                j += 1;
            }
            word.truncate(j);
        }
    }

    /// The character CLIP uses for a byte (exposed for tests).
    pub fn byte_char(&self, b: u8) -> char {
        self.byte_encoder[usize::from(b)]
    }
}

/// CLIP's `bytes_to_unicode`: printable bytes map to themselves, the rest to U+0100 onwards.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[usize::from(b)] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\u{FFFD}');
            n += 1;
            c
        };
    }
    table
}

/// The order of bytes in CLIP's vocabulary: printable ranges first, then the rest in byte order.
fn byte_order() -> Vec<u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut order: Vec<u8> = (0..=255u8).filter(|&b| printable(b)).collect();
    order.extend((0..=255u8).filter(|&b| !printable(b)));
    order
}

/// ImageBind's `whitespace_clean(basic_clean(text)).lower()`.
pub fn clean(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    let stripped = py_strip(&unescaped);
    let collapsed = collapse_whitespace(stripped);
    py_strip(&collapsed).to_lowercase()
}

fn is_py_space(c: char) -> bool {
    tables::PY_ISSPACE.binary_search(&c).is_ok()
}

fn is_regex_space(c: char) -> bool {
    tables::REGEX_WHITESPACE.binary_search(&c).is_ok()
}

/// Python's `str.strip()`.
fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// `regex.sub(r"\s+", " ", s)`.
fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_space = false;
    for c in s.chars() {
        if is_regex_space(c) {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out
}

/// `ftfy.fix_text(text)` with its default configuration, minus the mojibake heuristics (see the module docs).
pub fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    for segment in text.split_inclusive('\n') {
        // ftfy's "auto" HTML unescaping switches off for this and every later segment once one holds '<'.
        if segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
    }
    out
}

/// One segment of `fix_text`: the fixers in ftfy's order, repeated until nothing changes.
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_owned();
    // ftfy loops until a fixpoint; each pass only shortens or normalises, so this terminates quickly. The bound
    // guards against a pathological oscillation.
    for _ in 0..16 {
        let orig = text.clone();
        if unescape {
            text = ftfy_unescape_html(&text);
        }
        text = text
            .chars()
            .map(|c| match u32::from(c) {
                0x80..=0x9F => tables::C1_TO_WINDOWS_1252[(u32::from(c) - 0x80) as usize],
                _ => c,
            })
            .collect();
        text = translate(&text, tables::LIGATURES);
        text = translate(&text, tables::WIDTH_MAP);
        text = text
            .chars()
            .map(|c| {
                if tables::DOUBLE_QUOTES.contains(&c) {
                    '"'
                } else if tables::SINGLE_QUOTES.contains(&c) {
                    '\''
                } else {
                    c
                }
            })
            .collect();
        text = text
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .replace(['\u{2028}', '\u{2029}', '\u{85}'], "\n");
        text = remove_terminal_escapes(&text);
        text = translate(&text, tables::CONTROL_CHARS);
        text = text.nfc().collect();
        if text == orig {
            break;
        }
    }
    text
}

/// `str.translate` with a sorted (char → replacement or removal) table.
fn translate(s: &str, table: &[(char, Option<&str>)]) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match table.binary_search_by_key(&c, |&(k, _)| k) {
            Ok(i) => {
                if let Some(r) = table[i].1 {
                    out.push_str(r);
                }
            }
            Err(_) => out.push(c),
        }
    }
    out
}

/// ftfy's `remove_terminal_escapes`: `\x1b[` digits/semicolons, then a letter.
fn remove_terminal_escapes(s: &str) -> String {
    if !s.contains('\u{1b}') {
        return s.to_owned();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\u{1b}' && chars.get(i + 1) == Some(&'[') {
            let mut j = i + 2;
            // Python's `\d` in a str pattern is any Unicode decimal digit.
            while j < chars.len() && (chars[j] == ';' || is_unicode_decimal(chars[j])) {
                j += 1;
            }
            if j < chars.len() && chars[j].is_ascii_alphabetic() {
                i = j + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

fn is_unicode_decimal(c: char) -> bool {
    static DIGIT: std::sync::OnceLock<Option<Regex>> = std::sync::OnceLock::new();
    DIGIT
        .get_or_init(|| Regex::new(r"^\d$").ok())
        .as_ref()
        .is_some_and(|re| re.is_match(c.encode_utf8(&mut [0; 4])))
}

/// ftfy's `unescape_html`: `&#?[0-9A-Za-z]{1,24};` replaced from ftfy's table, or as a numeric reference.
fn ftfy_unescape_html(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'&' {
            let mut j = i + 1;
            if j < bytes.len() && bytes[j] == b'#' {
                j += 1;
            }
            let start = j;
            while j < bytes.len() && j - start < 24 && bytes[j].is_ascii_alphanumeric() {
                j += 1;
            }
            if j > start && j < bytes.len() && bytes[j] == b';' {
                let entity = &s[i..=j];
                let replacement = if let Ok(k) = tables::FTFY_ENTITIES.binary_search_by_key(&entity, |&(k, _)| k) {
                    Some(tables::FTFY_ENTITIES[k].1.to_owned())
                } else if entity.starts_with("&#") {
                    let unescaped = html_unescape(entity);
                    (!unescaped.contains(';')).then_some(unescaped)
                } else {
                    None
                };
                if let Some(r) = replacement {
                    out.push_str(&s[last..i]);
                    out.push_str(&r);
                    i = j + 1;
                    last = i;
                    continue;
                }
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&s[last..]);
    out
}

/// Python's `html.unescape`.
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '&' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        match charref_at(&chars, i + 1) {
            Some((end, replacement)) => {
                out.push_str(&replacement);
                i = end;
            }
            None => {
                out.push('&');
                i += 1;
            }
        }
    }
    out
}

/// Matches Python's `_charref` after an `&` at `start`; returns the end index and the replacement.
fn charref_at(chars: &[char], start: usize) -> Option<(usize, String)> {
    let c0 = *chars.get(start)?;
    if c0 == '#' {
        let hex = matches!(chars.get(start + 1), Some('x' | 'X'));
        let digits_start = if hex { start + 2 } else { start + 1 };
        let mut j = digits_start;
        while j < chars.len()
            && (if hex {
                chars[j].is_ascii_hexdigit()
            } else {
                chars[j].is_ascii_digit()
            })
        {
            j += 1;
        }
        if j == digits_start {
            // `&#` or `&#x` without digits: the named-reference branch cannot match '#' either.
            return None;
        }
        let digits: String = chars[digits_start..j].iter().collect();
        let end = if chars.get(j) == Some(&';') { j + 1 } else { j };
        let num = u32::from_str_radix(digits.trim_start_matches('0'), if hex { 16 } else { 10 })
            .ok()
            .or_else(|| digits.chars().all(|c| c == '0').then_some(0))
            .unwrap_or(u32::MAX);
        let replacement = if let Ok(k) = tables::INVALID_CHARREFS.binary_search_by_key(&num, |&(k, _)| k) {
            tables::INVALID_CHARREFS[k].1.to_string()
        } else if (0xD800..=0xDFFF).contains(&num) || num > 0x10FFFF {
            "\u{FFFD}".to_owned()
        } else if tables::INVALID_CODEPOINTS.binary_search(&num).is_ok() {
            String::new()
        } else {
            char::from_u32(num)
                .map(String::from)
                .unwrap_or_else(|| "\u{FFFD}".to_owned())
        };
        return Some((end, replacement));
    }
    // Named: [^\t\n\f <&#;]{1,32};?
    let excluded = |c: char| matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';');
    let mut j = start;
    while j < chars.len() && j - start < 32 && !excluded(chars[j]) {
        j += 1;
    }
    if j == start {
        return None;
    }
    let end = if chars.get(j) == Some(&';') { j + 1 } else { j };
    let name: String = chars[start..end].iter().collect();
    if let Some(r) = html5(&name) {
        return Some((end, r.to_owned()));
    }
    // The longest prefix (at least 2 characters) that is an entity name.
    let name_chars: Vec<char> = name.chars().collect();
    for x in (2..name_chars.len()).rev() {
        let prefix: String = name_chars[..x].iter().collect();
        if let Some(r) = html5(&prefix) {
            let rest: String = name_chars[x..].iter().collect();
            return Some((end, format!("{r}{rest}")));
        }
    }
    Some((end, format!("&{name}")))
}

fn html5(name: &str) -> Option<&'static str> {
    tables::HTML5_ENTITIES
        .binary_search_by_key(&name, |&(k, _)| k)
        .ok()
        .map(|k| tables::HTML5_ENTITIES[k].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/imagebind-tiny/bpe_simple_vocab_16e6.txt.gz");
        Tokenizer::from_file(&path).unwrap()
    }

    fn ids(t: &Tokenizer, s: &str) -> Vec<i64> {
        t.tokenize(s).into_iter().filter(|&i| i != 0).collect()
    }

    #[test]
    fn tokenizes_the_specs_examples() {
        let t = tokenizer();
        assert_eq!(ids(&t, "A dog."), vec![49406, 320, 1929, 269, 49407]);
        assert_eq!(ids(&t, "A car"), vec![49406, 320, 1615, 49407]);
        assert_eq!(
            ids(&t, "a photo of a dog"),
            vec![49406, 320, 1125, 539, 320, 1929, 49407]
        );
    }

    #[test]
    fn long_texts_keep_their_eot() {
        let t = tokenizer();
        let toks = t.tokenize(&"dog ".repeat(100));
        assert_eq!(toks[0], SOT);
        assert_eq!(toks[76], EOT);
        assert!(toks[1..76].iter().all(|&i| i != 0 && i != EOT));
        assert_eq!(t.tokenize(""), {
            let mut e = [0i64; 77];
            e[0] = SOT;
            e[1] = EOT;
            e
        });
    }

    #[test]
    fn cleaning_follows_ftfy_and_html() {
        assert_eq!(clean("  “Smart”   quotes\u{2019}s  "), "\"smart\" quotes's");
        assert_eq!(clean("ﬁne ﬂour"), "fine flour");
        assert_eq!(clean("ＬＯＵＤ　ＮＯＩＳＥ"), "loud noise");
        assert_eq!(clean("fish &amp;amp; chips"), "fish & chips");
        assert_eq!(clean("&lt;b&gt; bold"), "<b> bold");
        assert_eq!(clean("caf\u{65}\u{301}"), "caf\u{e9}");
        assert_eq!(clean("\u{1b}[31mred\u{1b}[0m"), "red");
        assert_eq!(
            html_unescape("&#128; &#x1F600; &#0; &notit; &amp"),
            "\u{20ac} \u{1f600} \u{fffd} \u{ac}it; &"
        );
    }

    #[test]
    fn rust_whitespace_class_matches_the_regex_module() {
        let re = Regex::new(r"^\s$").unwrap();
        for cp in 0..0x11_0000u32 {
            if let Some(c) = char::from_u32(cp) {
                assert_eq!(re.is_match(c.encode_utf8(&mut [0; 4])), is_regex_space(c), "U+{cp:04X}");
            }
        }
    }
}
