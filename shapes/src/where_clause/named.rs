//! Named placeholders for filters written by operators (access rules): `:name` becomes
//! `$n`, and `[NOT] IN :name` becomes `= ANY($n)` / `<> ALL($n)` so a list can fill it.
//! The rest of the text is left byte for byte as written.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// A filter with its named placeholders numbered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub text: String,
    /// The placeholder behind `$1`, `$2`, …
    pub params: Vec<NamedParam>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedParam {
    pub name: String,
    /// Filled by a list (`IN :name`, `= ANY(:name)`), not one value.
    pub list: bool,
}

pub fn rewrite_named(text: &str) -> Result<Named, String> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, text).tokenize_with_location().map_err(|e| e.to_string())?;
    let offsets = LineOffsets::new(text);
    let significant: Vec<&TokenWithSpan> = tokens.iter().filter(|t| !matches!(t.token, Token::Whitespace(_))).collect();
    let mut params: Vec<NamedParam> = Vec::new();
    // (byte range in `text`, replacement)
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    for (i, t) in significant.iter().enumerate() {
        let name = match &t.token {
            Token::Colon => match significant.get(i + 1) {
                Some(next)
                    if next.span.start == t.span.end
                        && matches!(&next.token, Token::Word(w) if w.quote_style.is_none()) =>
                {
                    let Token::Word(w) = &next.token else { unreachable!("matched above") };
                    w.value.clone()
                }
                _ => return Err("a ':' must be followed directly by a claim name, e.g. :org_id".into()),
            },
            Token::Placeholder(p) if p.starts_with(':') => p[1..].to_string(),
            _ => continue,
        };
        let end_token = if matches!(t.token, Token::Colon) { significant[i + 1] } else { t };
        let start = offsets.at(t.span.start.line, t.span.start.column);
        let end = offsets.at(end_token.span.end.line, end_token.span.end.column);
        let keyword = |j: usize, k: Keyword| {
            j < significant.len() && matches!(&significant[j].token, Token::Word(w) if w.keyword == k)
        };
        let in_list = i >= 1 && keyword(i - 1, Keyword::IN);
        let not_in = in_list && i >= 2 && keyword(i - 2, Keyword::NOT);
        let any_call = i >= 2
            && matches!(significant[i - 1].token, Token::LParen)
            && (keyword(i - 2, Keyword::ANY) || keyword(i - 2, Keyword::ALL));
        let list = in_list || any_call;
        let n = match params.iter().position(|p| p.name == name && p.list == list) {
            Some(p) => p + 1,
            None => {
                params.push(NamedParam { name, list });
                params.len()
            }
        };
        if in_list {
            // Replace from the IN (or NOT) keyword on.
            let first = significant[if not_in { i - 2 } else { i - 1 }];
            let from = offsets.at(first.span.start.line, first.span.start.column);
            let op = if not_in { "<> ALL" } else { "= ANY" };
            edits.push((from..end, format!("{op}(${n})")));
        } else {
            edits.push((start..end, format!("${n}")));
        }
    }
    let mut out = text.to_string();
    for (range, with) in edits.into_iter().rev() {
        out.replace_range(range, &with);
    }
    Ok(Named { text: out, params })
}

/// Byte offsets of 1-based (line, column) positions, columns counted in characters.
struct LineOffsets<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineOffsets<'a> {
    fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        LineOffsets { text, starts }
    }

    fn at(&self, line: u64, column: u64) -> usize {
        let start = self.starts.get(line.saturating_sub(1) as usize).copied().unwrap_or(self.text.len());
        self.text[start..]
            .char_indices()
            .nth(column.saturating_sub(1) as usize)
            .map_or(self.text.len(), |(i, _)| start + i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_numbers_and_lists_become_any() {
        let n =
            rewrite_named("org_id IN :orgs AND owner = :sub AND x::text <> ':no' OR t NOT IN :orgs OR 1 = ANY(:orgs)")
                .unwrap();
        assert_eq!(n.text, "org_id = ANY($1) AND owner = $2 AND x::text <> ':no' OR t <> ALL($1) OR 1 = ANY($1)");
        assert_eq!(
            n.params,
            vec![NamedParam { name: "orgs".into(), list: true }, NamedParam { name: "sub".into(), list: false }]
        );
        assert!(rewrite_named("a = : b").is_err());
        let multi = rewrite_named("a = :x\n  AND b = :y").unwrap();
        assert_eq!(multi.text, "a = $1\n  AND b = $2");
    }
}
